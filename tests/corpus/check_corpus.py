#!/usr/bin/env python
# ruff: noqa  (runs on Python 3.8+ under anndata 0.6-0.13; old-style formatting on purpose)
"""Check which anndata stack reads which corpus file, and build manifest.json.

<reader-python> check_corpus.py check CORPUS_DIR
    read every data/* file with this interpreter's anndata
    (read_h5ad / read_zarr, i.e. everything into memory) and write
    meta/readcheck-<anndata major.minor>.json
python3 check_corpus.py manifest CORPUS_DIR
    combine meta/<set>.json (written by make_corpus.py) and the
    readcheck files into CORPUS_DIR/manifest.json (stdlib only)
"""

from __future__ import annotations

import glob
import json
import os
import platform
import sys
import warnings


def store_format(path):
    if os.path.isfile(path):
        return "h5ad"
    if os.path.exists(os.path.join(path, "zarr.json")):
        return "zarr3"
    if os.path.exists(os.path.join(path, ".zgroup")):
        return "zarr2"
    return None


def check(corpus):
    from importlib.metadata import version

    import anndata as ad

    adv = version("anndata")
    label = ".".join(adv.split(".")[:2])
    out = {
        "reader": label,
        "anndata": adv,
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "pandas": version("pandas"),
        "h5py": version("h5py"),
        "zarr": version("zarr"),
        "awkward": _maybe_version("awkward"),
        "files": {},
    }
    data = os.path.join(corpus, "data")
    for name in sorted(os.listdir(data)):
        path = os.path.join(data, name)
        fmt = store_format(path)
        if fmt is None:
            continue
        entry = {"format": fmt}
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                a = ad.read_h5ad(path) if fmt == "h5ad" else ad.read_zarr(path)
                entry["ok"] = True
                entry["shape"] = list(a.shape)
                entry["obs_dtypes"] = {str(c): str(a.obs[c].dtype) for c in a.obs.columns}
                entry["obs_index_dtype"] = str(a.obs.index.dtype)
                entry["raw_shape"] = list(a.raw.shape) if a.raw is not None else None
                entry["ordered_categoricals"] = sorted(
                    str(c)
                    for c in a.obs.columns
                    if str(a.obs[c].dtype) == "category" and a.obs[c].cat.ordered
                )
            except Exception as e:
                entry["ok"] = False
                entry["error"] = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")[:400]
        # summarise: per warning class, how many distinct messages and the first few
        by_cat = {}
        for x in w:
            by_cat.setdefault(x.category.__name__, set()).add(str(x.message).split("\n")[0][:160])
        if by_cat:
            entry["warnings"] = {
                k: {"count": len(v), "examples": sorted(v)[:3]} for k, v in sorted(by_cat.items())
            }
        out["files"][name] = entry
        print(
            "%-5s %-45s %s" % (label, name, "ok" if entry["ok"] else "FAIL " + entry["error"][:120])
        )
    dest = os.path.join(corpus, "meta", "readcheck-%s.json" % label)
    with open(dest, "w") as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
        fh.write("\n")


def _maybe_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# What we observed in the files of the legacy writers (h5ls / zarr listing);
# see README.md.
LEGACY = {
    "anndata-0.6.22": (
        "legacy 0.6 layout: obs/var/raw.var are HDF5 compound datasets (field 'index' + one field per column, "
        "categoricals as int8 codes), categories stored as uns/<col>_categories, the ordered flag is not stored "
        "(obs 'stage' reads back unordered), raw as top-level raw.X/raw.var, obsm/varm/layers are groups of plain "
        "datasets (not structured arrays, unlike pbmc68k_reduced), sparse matrices as groups with "
        "h5sparse_format/h5sparse_shape attrs, no encoding-type attrs anywhere, no obsp/varp"
    ),
    "anndata-0.7.8": (
        "0.7 layout: dataframes are groups (encoding-type dataframe 0.1.0) but categorical codes are plain "
        "datasets with a 'categories' attr (h5ad: object reference; zarr: path string) pointing into "
        "obs/__categories/<col> (var/__categories too); uns, obsm, varm, obsp, varp, layers and the root carry "
        "no encoding attrs; zarr store is not consolidated"
    ),
}


def manifest(corpus):
    meta_dir = os.path.join(corpus, "meta")
    sets = {}
    for p in sorted(glob.glob(os.path.join(meta_dir, "*.json"))):
        if os.path.basename(p).startswith("readcheck-"):
            continue
        with open(p) as fh:
            m = json.load(fh)
        sets[m["tag"]] = m
    checks = {}
    for p in sorted(glob.glob(os.path.join(meta_dir, "readcheck-*.json"))):
        with open(p) as fh:
            c = json.load(fh)
        checks[c["reader"]] = c
    entries = []
    data = os.path.join(corpus, "data")
    for tag in sorted(sets):
        m = sets[tag]
        for fname in sorted(m["files"]):
            e = m["files"][fname]
            if not os.path.exists(os.path.join(data, fname)):
                continue
            notes = []
            if e.get("notes"):
                notes.append(e["notes"])
            if tag in LEGACY:
                notes.append(LEGACY[tag])
            if e.get("dropped"):
                notes.append(
                    "not written (this version cannot round-trip them): "
                    + ", ".join(sorted(e["dropped"]))
                )
            if e.get("self_read_error"):
                notes.append(
                    "the writing stack itself cannot read this file back: " + e["self_read_error"]
                )
            if e.get("missing_after_read"):
                notes.append(
                    "written, but absent when the writing stack reads the file back: "
                    + ", ".join(e["missing_after_read"])
                )
            for f in e.get("features", []):
                if "WRITTEN BUT NOT READABLE" in f:
                    notes.append(
                        f.split(" (")[0] + " is written but the writing stack cannot read it back"
                    )
            od = e.get("obs_dtypes") or {}
            if od.get("donor") == "category" or od.get("note") == "category":
                notes.append(
                    "low-cardinality obs string columns (donor, note) were turned into categoricals on write"
                )
            readable, errors, warn, ordered = [], {}, {}, {}
            for label in sorted(checks, key=lambda s: [int(x) for x in s.split(".")]):
                r = checks[label]["files"].get(fname)
                if r is None:
                    continue
                if r["ok"]:
                    readable.append(label)
                else:
                    errors[label] = r["error"]
                if r.get("warnings"):
                    warn[label] = r["warnings"]
                if r["ok"]:
                    ordered[label] = r.get("ordered_categoricals", [])
                    if r.get("raw_shape") is None and os.path.exists(os.path.join(data, fname, "raw")):
                        notes.append("a raw/ group is on disk but the %s reader returns raw=None" % label)
            entry = {
                "file": fname,
                "path": "data/" + fname,
                "written_by": m["anndata"],
                "set": tag,
                "python": m.get("python"),
                "numpy": m.get("numpy"),
                "pandas": m.get("pandas"),
                "h5py": m.get("h5py"),
                "zarr": m.get("zarr"),
                "scanpy": m.get("scanpy") if e.get("kind") == "scanpy" else None,
                "format": e["format"],
                "kind": e.get("kind"),
                "shape": e.get("shape"),
                "size_bytes": e.get("size_bytes"),
                "n_files": e.get("n_files"),
                "contents": e.get("contents"),
                "readable_by": readable,
                "read_errors": errors,
                "read_warnings": warn,
                "ordered_obs_categoricals_as_read": ordered,
                "notes": "; ".join(notes),
            }
            entries.append(entry)
    out = {
        "description": "AnnData compatibility corpus; see README.md. readable_by lists the anndata "
        "major.minor of the reader stacks (meta/readcheck-*.json) that loaded the file with "
        "read_h5ad/read_zarr without an exception.",
        "readers": {
            k: {
                kk: v[kk]
                for kk in ("anndata", "python", "numpy", "pandas", "h5py", "zarr", "awkward")
            }
            for k, v in checks.items()
        },
        "files": entries,
    }
    with open(os.path.join(corpus, "manifest.json"), "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("manifest.json: %d files, readers %s" % (len(entries), sorted(checks)))


if __name__ == "__main__":
    cmd, corpus = sys.argv[1], os.path.abspath(sys.argv[2])
    {"check": check, "manifest": manifest}[cmd](corpus)
