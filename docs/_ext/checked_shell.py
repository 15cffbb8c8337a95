"""IPython extension for the executed docs: a ``!command`` that fails fails the build.

IPython only records a shell command's exit code in ``_exit_code``; the docs load this
extension in a hidden first cell so a failing ``!annlayout ...`` raises like failing Python.
"""

from __future__ import annotations

from typing import Any


class CommandFailed(RuntimeError):
    pass


def load_ipython_extension(ipython: Any) -> None:
    run = ipython.system

    def checked(command: str) -> None:
        # expand {names} in the notebook's namespace here: IPython expands in its caller's
        # frame, which would now be this function's (it expands again, finding no braces)
        run(ipython.var_expand(command, depth=1))
        code = ipython.user_ns.get("_exit_code", 0)
        if code:
            raise CommandFailed(f"exit code {code}: {command}")

    ipython.system = checked
