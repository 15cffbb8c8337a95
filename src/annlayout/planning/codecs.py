"""One codec description, three storage dialects: zarr v3, zarr v2 (numcodecs) and h5py.
The codec pipeline zarr encodes and decodes chunks with is set in storage/pipeline.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from annlayout.layout.spec import Blosc, Gzip, NoCodec, Zstd

CodecModel = Zstd | Blosc | Gzip | NoCodec


def storable(codecs: Sequence[CodecModel], fmt: str, zarr_format: int) -> tuple[CodecModel, ...]:
    """The codecs a target can hold: h5ad only gzip, zarr v2 one compressor, zarr v3 all.

    Layout files are checked against their own target; this covers a layout's callback used
    with another kind of group, which keeps what it can.
    """
    real = tuple(c for c in codecs if not isinstance(c, NoCodec))
    if fmt == "h5ad":
        return tuple(c for c in real if isinstance(c, Gzip))[:1]
    return real[:1] if zarr_format == 2 else real


def zarr_v3_compressors(codecs: Sequence[CodecModel]) -> list[Any]:
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    out: list[Any] = []
    for codec in codecs:
        match codec:
            case Zstd(level=level, checksum=checksum):
                out.append(ZstdCodec(level=level, checksum=checksum))
            case Blosc(cname=cname, clevel=clevel, shuffle=shuffle):
                out.append(BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle))
            case Gzip(level=level):
                out.append(GzipCodec(level=level))
    return out


def zarr_v2_compressor(codecs: Sequence[CodecModel]) -> Any:
    """zarr v2 stores exactly one compressor; the spec rejects layouts asking for more."""
    import numcodecs

    for codec in codecs:
        match codec:
            case Zstd(level=level, checksum=checksum):
                return numcodecs.Zstd(level=level, checksum=checksum)
            case Blosc(cname=cname, clevel=clevel, shuffle=shuffle):
                mode = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[shuffle]
                return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=mode)
            case Gzip(level=level):
                return numcodecs.GZip(level=level)
    return None


def h5py_kwargs(codecs: Sequence[CodecModel]) -> dict[str, Any]:
    for codec in codecs:
        if isinstance(codec, Gzip):
            return {"compression": "gzip", "compression_opts": codec.level}
    return {}


def describe(codecs: Sequence[CodecModel]) -> str:
    """Short human form, e.g. ``blosc(lz4,3,shuffle)``; what plan and inspect print."""
    parts = []
    for codec in codecs:
        match codec:
            case Zstd(level=level):
                parts.append(f"zstd({level})")
            case Blosc(cname=cname, clevel=clevel, shuffle=shuffle):
                parts.append(f"blosc({cname},{clevel},{shuffle})")
            case Gzip(level=level):
                parts.append(f"gzip({level})")
    return "+".join(parts) or "none"


def describe_stored(compressors: Sequence[Any]) -> str:
    """The same short form for codec objects read back from a store (zarr v2/v3 or h5py)."""
    parts = []
    for codec in compressors:
        name = type(codec).__name__.lower().removesuffix("codec")
        config = codec.get_config() if hasattr(codec, "get_config") else {}
        if hasattr(codec, "to_dict"):
            config = codec.to_dict().get("configuration", {})
        if name == "zstd":
            parts.append(f"zstd({config.get('level', '?')})")
        elif name == "blosc":
            shuffle = config.get("shuffle", "?")
            shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}.get(shuffle, shuffle)
            shuffle = getattr(shuffle, "value", shuffle)
            parts.append(f"blosc({config.get('cname', '?')},{config.get('clevel', '?')},{shuffle})")
        elif name == "gzip":
            parts.append(f"gzip({config.get('level', '?')})")
        else:
            parts.append(name)
    return "+".join(parts) or "none"
