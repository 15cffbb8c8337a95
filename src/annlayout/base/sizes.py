"""Byte sizes as users write them (``2GiB``, ``512MB``): parsed in one place, so every option
that takes one (--memory, --whole-below) accepts and refuses the same forms."""

from __future__ import annotations

from annlayout.base.errors import ApplyError


def parse_size(value: str | int, option: str = "--memory") -> int:
    """A byte size (``2GiB``, ``512MB``, ``0``, an int) as bytes; ApplyError names the option."""
    from pydantic import ByteSize, TypeAdapter  # not at import: the CLI starts without pydantic

    if isinstance(value, str) and value.strip().isdigit() and int(value) != 0:
        # a bare "10" meant as 10 GiB would be a 10-byte budget: ask for the unit instead
        raise ApplyError(
            f"{option} {value!r}: give a unit (e.g. {value.strip()}GiB or {value.strip()}MB)"
        )
    try:
        return int(TypeAdapter(ByteSize).validate_python(value))
    except Exception:
        raise ApplyError(f"{option} {value!r}: not a byte size (e.g. 2GiB, 512MB, 0)") from None


__all__ = ["parse_size"]
