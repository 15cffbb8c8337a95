#!/usr/bin/env python
# ruff: noqa  (runs on Python 3.8+ under anndata 0.6-0.13; old-style formatting on purpose)
"""Write one anndata version's compatibility-corpus files.

Run it with the interpreter of a venv that has exactly one anndata version
installed (see ``regenerate.sh``)::

    python make_corpus.py OUTDIR [--tag anndata-0.12.19] [--formats h5ad,zarr2,zarr3]
                                 [--extras] [--scanpy] [--meta-dir DIR]

It must run on every Python from 3.8 to 3.12 and on every anndata from 0.6.22
to 0.13.x, so it sticks to old syntax and feature-detects instead of assuming:
every optional element (nullable columns, obsp, varp, layers, raw, each ``uns``
entry, ...) is first written on its own into a scratch store of the target
format and read back; only elements that survive that round trip go into the
corpus file, the others are listed as "dropped" (with the error) in the
metadata JSON written next to the files.

All data is generated from a fixed seed (numpy's legacy ``RandomState``, whose
stream is stable across numpy versions), so a rerun with the same pinned
environment gives the same arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import traceback
import warnings
import zlib

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

warnings.simplefilter("ignore")

N_OBS = 200
N_VARS_RAW = 130
N_VARS = 100
N_PCS = 10
N_NEIGHBORS = 15
N_RANK_GENES = 25
SEED = 0

CELL_TYPES = ["B cell", "CD4 T", "CD8 T", "Monocyte", "NK"]
CELL_TYPE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
STAGES = ["early", "mid", "late"]  # deliberately not alphabetical
BATCHES = ["batch1", "batch2", "batch3"]  # batch3 is never used
CHROMS = ["chr1", "chr2", "chrX", "chrM"]


# --------------------------------------------------------------------------
# versions / capabilities
# --------------------------------------------------------------------------
def dist_version(name):
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - py<3.8
        return None
    try:
        return metadata.version(name)
    except Exception:
        return None


def all_dists():
    from importlib import metadata

    out = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            out[name.lower()] = d.version
    return dict(sorted(out.items()))


def vtuple(v):
    """'0.10.9' -> (0, 10, 9); '0.13.0rc1' -> (0, 13, 0); None -> ()."""
    if not v:
        return ()
    parts = []
    for p in str(v).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group(0)))
        if m.group(0) != p:
            break
    return tuple(parts)


AD_VERSION = dist_version("anndata") or getattr(ad, "__version__", "0")
AD = vtuple(AD_VERSION)
PD = vtuple(pd.__version__)
ZARR_VERSION = dist_version("zarr")
ZARR = vtuple(ZARR_VERSION)


def has_zarr():
    try:
        import zarr  # noqa: F401
    except Exception:
        return False
    return hasattr(ad.AnnData, "write_zarr")


def default_formats():
    fmts = ["h5ad"]
    if has_zarr():
        fmts.append("zarr2")
        if AD >= (0, 12) and ZARR >= (3,) and hasattr(ad.settings, "zarr_write_format"):
            fmts.append("zarr3")
    return fmts


def settings_snapshot():
    out = {}
    s = getattr(ad, "settings", None)
    if s is None:
        return out
    for k in (
        "zarr_write_format",
        "allow_write_nullable_strings",
        "auto_shard_zarr_v3",
        "use_sparse_array_on_read",
        "write_csr_csc_indices_with_min_possible_dtype",
        "remove_unused_categories",
    ):
        try:
            v = getattr(s, k)
        except Exception:
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        else:
            out[k] = repr(v)
    return out


def configure_settings():
    s = getattr(ad, "settings", None)
    if s is not None and hasattr(s, "allow_write_nullable_strings"):
        try:
            s.allow_write_nullable_strings = True
        except Exception:
            pass


# --------------------------------------------------------------------------
# deterministic data
# --------------------------------------------------------------------------
def rng_for(name):
    return np.random.RandomState((SEED + zlib.crc32(name.encode("utf8"))) % (2**32))


def barcodes(rng, n):
    letters = np.array(list("ACGT"))
    idx = rng.randint(0, 4, size=(n, 16))
    out = []
    seen = set()
    for i in range(n):
        b = "".join(letters[idx[i]]) + "-1"
        while b in seen:  # practically never
            b = b[:-2] + "A-1"
        seen.add(b)
        out.append(b)
    return out


def gene_names(n):
    names = []
    for i in range(n):
        if i < 4:
            names.append("MT-ND%d" % (i + 1))
        else:
            names.append("GENE%04d" % i)
    return names


def knn_graphs(emb, k):
    """scanpy-like kNN distances (k-1 neighbours, no self) and symmetric fuzzy connectivities."""
    n = emb.shape[0]
    emb = emb.astype(np.float64)
    d2 = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    idx = np.argsort(d2, axis=1, kind="mergesort")[:, : k - 1]
    dist = np.sqrt(np.take_along_axis(d2, idx, axis=1))
    rows = np.repeat(np.arange(n), k - 1)
    distances = sparse.csr_matrix(
        (dist.ravel().astype(np.float32), (rows, idx.ravel())), shape=(n, n)
    )
    rho = dist[:, :1]
    sigma = np.maximum(dist.mean(axis=1, keepdims=True) - rho, 1e-3)
    w = np.exp(-(dist - rho) / sigma)
    a = sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(n, n))
    conn = (a + a.T - a.multiply(a.T)).tocsr()
    conn.eliminate_zeros()
    conn = conn.astype(np.float32)
    for m in (distances, conn):
        m.sort_indices()
    return distances, conn


class Data:
    """All arrays, generated once."""

    def __init__(self):
        rng = np.random.RandomState(SEED)
        n, g = N_OBS, N_VARS_RAW
        self.obs_names = barcodes(rng, n)
        self.raw_var_names = gene_names(g)
        ct = rng.randint(0, len(CELL_TYPES), size=n)
        self.cell_type_codes = ct
        # counts: gamma-poisson with a cell-type specific program, ~10-15% non-zero
        base = rng.gamma(0.25, 1.0, size=g)
        prog = rng.gamma(1.0, 1.0, size=(len(CELL_TYPES), g)) * (rng.rand(len(CELL_TYPES), g) < 0.2)
        lib = rng.lognormal(0.0, 0.3, size=n)
        lam = (base[None, :] + 2.0 * prog[ct]) * lib[:, None] * 0.15
        counts = rng.poisson(lam).astype(np.float32)
        self.raw_counts = sparse.csr_matrix(counts)
        tot = counts.sum(1, keepdims=True)
        tot[tot == 0] = 1
        lognorm = np.log1p(counts / tot * 1e4).astype(np.float32)
        self.raw_log1p = sparse.csr_matrix(lognorm)
        # main object: genes expressed in most cells -> first N_VARS by detection rate
        detected = (counts > 0).sum(0)
        keep = np.sort(np.argsort(-detected, kind="mergesort")[:N_VARS])
        self.keep = keep
        self.var_names = [self.raw_var_names[i] for i in keep]
        self.counts = sparse.csr_matrix(counts[:, keep])
        self.log1p = sparse.csr_matrix(lognorm[:, keep])
        self.dense_counts = counts[:, keep].copy()
        # PCA on log1p
        x = lognorm[:, keep].astype(np.float64)
        xc = x - x.mean(0)
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        # deterministic sign
        imax = np.abs(vt).argmax(1)
        signs = np.sign(vt[np.arange(vt.shape[0]), imax])
        signs[signs == 0] = 1
        u = u * signs[None, :]
        vt = vt * signs[:, None]
        self.X_pca = (u[:, :N_PCS] * s[:N_PCS]).astype(np.float32)
        self.PCs = vt[:N_PCS].T.astype(np.float32)
        var = s**2 / (n - 1)
        self.pca_variance = var[:N_PCS].astype(np.float32)
        self.pca_variance_ratio = (var[:N_PCS] / var.sum()).astype(np.float32)
        proj = rng.normal(size=(N_PCS, 2))
        self.X_umap = (
            self.X_pca.astype(np.float64).dot(proj) + rng.normal(scale=0.1, size=(n, 2))
        ).astype(np.float32)
        self.distances, self.connectivities = knn_graphs(self.X_pca, N_NEIGHBORS)
        # gene-gene correlation, thresholded -> sparse varp
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(x.T)
        c = np.nan_to_num(c)
        c[np.abs(c) < 0.3] = 0
        self.gene_corr = sparse.csr_matrix(c.astype(np.float32))
        # obs columns
        self.stage_codes = rng.randint(0, len(STAGES), size=n)
        self.batch_codes = rng.randint(0, 2, size=n)  # batch3 unused
        self.is_doublet = rng.rand(n) < 0.05
        self.n_genes = (counts[:, keep] > 0).sum(1).astype(np.int64)
        self.total_counts = counts[:, keep].sum(1).astype(np.float64)
        self.pct_mito = (100.0 * counts[:, :4].sum(1) / np.maximum(counts.sum(1), 1)).astype(
            np.float32
        )
        self.donor = np.array(
            ["donor_%s" % "ABC"[i] for i in rng.randint(0, 3, size=n)], dtype=object
        )
        self.cell_label = ["cell%04d_%s" % (i, self.donor[i]) for i in range(n)]
        self.na_mask = rng.rand(n) < 0.1
        self.qc_bits = rng.rand(n) < 0.8
        # var columns
        self.gene_ids = ["ENSG%011d" % (1000 + 7 * i) for i in range(g)]
        self.means = np.asarray(counts.mean(0)).ravel().astype(np.float64)
        self.n_cells = (counts > 0).sum(0).astype(np.int64)
        hv_rank = np.argsort(-lognorm[:, keep].var(0), kind="mergesort")
        self.highly_variable = np.zeros(N_VARS, dtype=bool)
        self.highly_variable[hv_rank[:40]] = True
        self.chrom_codes = rng.randint(0, len(CHROMS), size=g)
        self.chrom_codes[:4] = 3  # MT genes
        # rank_genes_groups-like record arrays
        self.rgg = self._rank_genes_groups(x, ct)
        # ragged per-cell data for awkward
        self.ragged_lengths = rng.randint(0, 4, size=n)
        self.ragged_values = rng.normal(size=int(self.ragged_lengths.sum())).astype(np.float32)

    def _rank_genes_groups(self, x, ct):
        names, scores, pvals, lfc = [], [], [], []
        for k in range(len(CELL_TYPES)):
            a = x[ct == k]
            b = x[ct != k]
            diff = a.mean(0) - b.mean(0)
            se = np.sqrt(a.var(0) / max(len(a), 1) + b.var(0) / max(len(b), 1)) + 1e-9
            t = diff / se
            order = np.argsort(-t, kind="mergesort")[:N_RANK_GENES]
            names.append(np.array([self.var_names[i] for i in order], dtype="U50"))
            scores.append(t[order].astype(np.float32))
            # a monotone stand-in for p-values (no scipy.stats needed)
            pvals.append(np.exp(-np.abs(t[order])).astype(np.float64))
            lfc.append((diff[order] / np.log(2)).astype(np.float32))
        groups = CELL_TYPES

        def rec(cols, dt):
            return np.rec.fromarrays(cols, dtype=[(g, dt) for g in groups])

        padj = [np.minimum(p * N_VARS, 1.0) for p in pvals]
        return {
            "names": rec(names, "U50"),
            "scores": rec(scores, "float32"),
            "pvals": rec(pvals, "float64"),
            "pvals_adj": rec(padj, "float64"),
            "logfoldchanges": rec(lfc, "float32"),
        }


# --------------------------------------------------------------------------
# building AnnData objects from features
# --------------------------------------------------------------------------
def cat(codes, categories, ordered=False):
    return pd.Categorical.from_codes(np.asarray(codes), categories=categories, ordered=ordered)


def base_adata(D, X="sparse"):
    obs = pd.DataFrame(index=pd.Index(list(D.obs_names)))
    var = pd.DataFrame(index=pd.Index(list(D.var_names)))
    if X == "sparse":
        x = D.counts.copy()
    elif X == "dense":
        x = D.dense_counts.copy()
    else:
        x = None
    if x is None:
        a = ad.AnnData(obs=obs, var=var)
    else:
        a = ad.AnnData(x, obs=obs, var=var)
    return a


def nullable(kind, D):
    """Return a nullable pandas array or raise if this pandas lacks it."""
    n = N_OBS
    if kind == "Int64":
        vals = pd.array(D.n_genes.tolist(), dtype=pd.Int64Dtype())
    elif kind == "boolean":
        vals = pd.array(D.qc_bits.tolist(), dtype=pd.BooleanDtype())
    elif kind == "string":
        vals = pd.array(["note_%d" % (i % 7) for i in range(n)], dtype=pd.StringDtype())
    else:
        raise ValueError(kind)
    vals[np.asarray(D.na_mask)] = pd.NA
    return vals


def _uns_rgg(D, variant):
    rgg = dict(D.rgg)
    if variant == "S":
        rgg["names"] = rgg["names"].astype([(g, "S50") for g in CELL_TYPES])
    out = {
        "params": {
            "groupby": "cell_type",
            "reference": "rest",
            "method": "t-test",
            "use_raw": False,
            "corr_method": "benjamini-hochberg",
        }
    }
    out.update(rgg)
    return out


def _set_raw(a, D):
    obs = pd.DataFrame(index=pd.Index(list(D.obs_names)))
    var = pd.DataFrame(
        {"gene_ids": list(D.gene_ids), "n_cells": D.n_cells},
        index=pd.Index(list(D.raw_var_names)),
    )
    a.raw = ad.AnnData(D.raw_log1p.copy(), obs=obs, var=var)


# Each feature: name -> list of variants; a variant is (label, fn(adata, D)).
# The first variant that round-trips is used.
def feature_table():
    F = []

    def add(name, *variants):
        F.append((name, list(variants)))

    def obs_col(col, fn):
        def f(a, D):
            a.obs[col] = fn(D)

        return f

    def var_col(col, fn):
        def f(a, D):
            a.var[col] = fn(D)

        return f

    def uns(key, fn):
        def f(a, D):
            a.uns[key] = fn(D)

        return f

    # obs
    add(
        "obs/cell_type",
        ("categorical", obs_col("cell_type", lambda D: cat(D.cell_type_codes, CELL_TYPES))),
    )
    add(
        "obs/stage",
        (
            "ordered categorical",
            obs_col("stage", lambda D: cat(D.stage_codes, STAGES, ordered=True)),
        ),
    )
    add(
        "obs/batch",
        (
            "categorical with unused category",
            obs_col("batch", lambda D: cat(D.batch_codes, BATCHES)),
        ),
    )
    add("obs/is_doublet", ("bool", obs_col("is_doublet", lambda D: D.is_doublet.copy())))
    add("obs/n_genes", ("int64", obs_col("n_genes", lambda D: D.n_genes.copy())))
    add("obs/total_counts", ("float64", obs_col("total_counts", lambda D: D.total_counts.copy())))
    add("obs/pct_mito", ("float32", obs_col("pct_mito", lambda D: D.pct_mito.copy())))
    # low-cardinality strings: anndata's write_* turns these into categoricals
    # (strings_to_categoricals) unless convert_strings_to_categoricals=False
    add(
        "obs/donor",
        ("3-valued str column (object / pandas 3 str)", obs_col("donor", lambda D: list(D.donor))),
    )
    # unique strings survive that conversion, so this stays a string array on disk
    add(
        "obs/cell_label",
        (
            "unique str column (object / pandas 3 str)",
            obs_col("cell_label", lambda D: list(D.cell_label)),
        ),
    )
    add(
        "obs/n_genes_nullable",
        ("pd.Int64Dtype with NA", obs_col("n_genes_nullable", lambda D: nullable("Int64", D))),
    )
    add(
        "obs/qc_pass",
        ("pd.BooleanDtype with NA", obs_col("qc_pass", lambda D: nullable("boolean", D))),
    )
    add("obs/note", ("pd.StringDtype with NA", obs_col("note", lambda D: nullable("string", D))))
    # var
    add("var/gene_ids", ("str", var_col("gene_ids", lambda D: [D.gene_ids[i] for i in D.keep])))
    add(
        "var/highly_variable",
        ("bool", var_col("highly_variable", lambda D: D.highly_variable.copy())),
    )
    add("var/means", ("float64", var_col("means", lambda D: D.means[D.keep].copy())))
    add(
        "var/chromosome",
        ("categorical", var_col("chromosome", lambda D: cat(D.chrom_codes[D.keep], CHROMS))),
    )
    # matrices
    add(
        "layers/counts",
        ("csr int32", lambda a, D: a.layers.__setitem__("counts", D.counts.astype(np.int32))),
    )
    add("layers/log1p", ("csr float32", lambda a, D: a.layers.__setitem__("log1p", D.log1p.copy())))
    add("obsm/X_pca", ("dense float32", lambda a, D: a.obsm.__setitem__("X_pca", D.X_pca.copy())))
    add(
        "obsm/X_umap", ("dense float32", lambda a, D: a.obsm.__setitem__("X_umap", D.X_umap.copy()))
    )
    add("varm/PCs", ("dense float32", lambda a, D: a.varm.__setitem__("PCs", D.PCs.copy())))
    add(
        "obsp/distances",
        ("csr float32", lambda a, D: a.obsp.__setitem__("distances", D.distances.copy())),
    )
    add(
        "obsp/connectivities",
        ("csr float32", lambda a, D: a.obsp.__setitem__("connectivities", D.connectivities.copy())),
    )
    add(
        "varp/gene_corr",
        ("csr float32", lambda a, D: a.varp.__setitem__("gene_corr", D.gene_corr.copy())),
    )
    add("raw", ("raw with %d genes (log1p)" % N_VARS_RAW, _set_raw))
    # uns
    add(
        "uns/neighbors",
        (
            "nested dict",
            uns(
                "neighbors",
                lambda D: {
                    "params": {
                        "n_neighbors": N_NEIGHBORS,
                        "method": "umap",
                        "metric": "euclidean",
                        "n_pcs": N_PCS,
                    },
                    "connectivities_key": "connectivities",
                    "distances_key": "distances",
                },
            ),
        ),
    )
    add(
        "uns/cell_type_colors",
        ("list of hex str", uns("cell_type_colors", lambda D: list(CELL_TYPE_COLORS))),
        ("U7 array", uns("cell_type_colors", lambda D: np.array(CELL_TYPE_COLORS, dtype="U7"))),
        ("S7 array", uns("cell_type_colors", lambda D: np.array(CELL_TYPE_COLORS, dtype="S7"))),
    )
    add(
        "uns/pca",
        (
            "dict of arrays",
            uns(
                "pca",
                lambda D: {
                    "variance": D.pca_variance.copy(),
                    "variance_ratio": D.pca_variance_ratio.copy(),
                    "params": {"zero_center": True, "use_highly_variable": False},
                },
            ),
        ),
    )
    add(
        "uns/rank_genes_groups",
        ("record arrays (names U50)", uns("rank_genes_groups", lambda D: _uns_rgg(D, "U"))),
        ("record arrays (names S50)", uns("rank_genes_groups", lambda D: _uns_rgg(D, "S"))),
    )
    add("uns/n_int", ("int", uns("n_int", lambda D: 42)))
    add("uns/a_float", ("float", uns("a_float", lambda D: 3.25)))
    add("uns/a_string", ("str", uns("a_string", lambda D: "hello corpus")))
    add("uns/a_bool", ("bool", uns("a_bool", lambda D: True)))
    add("uns/empty_dict", ("{}", uns("empty_dict", lambda D: {})))
    return F


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------
def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def accepts(fn, kw):
    import inspect

    try:
        return kw in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def write(a, path, fmt, keep_strings=False):
    """Write with anndata's defaults; keep_strings=True passes
    convert_strings_to_categoricals=False (anndata >= 0.11)."""
    remove(path)
    kw = {}
    if keep_strings:
        meth = a.write_h5ad if fmt == "h5ad" else a.write_zarr
        if not accepts(meth, "convert_strings_to_categoricals"):
            raise RuntimeError("this anndata has no convert_strings_to_categoricals")
        kw["convert_strings_to_categoricals"] = False
    if fmt == "h5ad":
        a.write_h5ad(path, **kw) if hasattr(a, "write_h5ad") else a.write(path)
    elif fmt in ("zarr2", "zarr3"):
        zf = 2 if fmt == "zarr2" else 3
        s = getattr(ad, "settings", None)
        if s is not None and hasattr(s, "zarr_write_format"):
            old = s.zarr_write_format
            s.zarr_write_format = zf
            try:
                a.write_zarr(path, **kw)
            finally:
                s.zarr_write_format = old
        else:
            if zf != 2:
                raise RuntimeError("zarr v3 not supported by this anndata")
            a.write_zarr(path)
    else:
        raise ValueError(fmt)


def read(path, fmt):
    if fmt == "h5ad":
        return ad.read_h5ad(path)
    return ad.read_zarr(path)


def ext(fmt):
    return ".h5ad" if fmt == "h5ad" else ".zarr"


def roundtrip_ok(a, fmt, tmpdir):
    path = os.path.join(tmpdir, "probe" + ext(fmt))
    write(a, path, fmt)
    b = read(path, fmt)
    remove(path)
    if b.shape != a.shape:
        raise RuntimeError("shape changed %r -> %r" % (a.shape, b.shape))
    return b


def short_err(e):
    s = "%s: %s" % (type(e).__name__, e)
    s = s.replace("\n", " ")
    return s[:300]


def select_features(D, fmt, tmpdir):
    chosen, dropped = [], {}
    for name, variants in feature_table():
        errs = []
        for label, fn in variants:
            try:
                a = base_adata(D)
                fn(a, D)
                roundtrip_ok(a, fmt, tmpdir)
            except Exception as e:
                errs.append("%s -> %s" % (label, short_err(e)))
                continue
            chosen.append((name, label, fn))
            break
        else:
            # Last resort: an element this stack writes but cannot read back
            # (e.g. anndata 0.6.22 + h5py 2.10 record arrays) is still a real-world
            # on-disk form, so keep it and say so.
            label, fn = variants[0]
            try:
                a = base_adata(D)
                fn(a, D)
                write(a, os.path.join(tmpdir, "probe" + ext(fmt)), fmt)
                remove(os.path.join(tmpdir, "probe" + ext(fmt)))
            except Exception:
                dropped[name] = "; ".join(errs)
            else:
                chosen.append(
                    (
                        name,
                        "%s; WRITTEN BUT NOT READABLE BY THE WRITING STACK: %s" % (label, errs[0]),
                        fn,
                    )
                )
    return chosen, dropped


def build(D, chosen, X="sparse"):
    a = base_adata(D, X=X)
    for _, _, fn in chosen:
        fn(a, D)
    return a


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path), 1
    total, nfiles = 0, 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
            nfiles += 1
    return total, nfiles


def present(b, name):
    """Is feature `name` (e.g. 'uns/pca', 'obs/stage', 'raw') present in object b?"""
    if name == "raw":
        return b.raw is not None
    attr, key = name.split("/", 1)
    if attr in ("obs", "var"):
        return key in getattr(b, attr).columns
    m = getattr(b, attr, None)
    return m is not None and key in m.keys()


def describe(a):
    parts = ["X=%s" % (type(a.X).__name__ if a.X is not None else None)]
    for attr in ("layers", "obsm", "varm", "obsp", "varp"):
        m = getattr(a, attr, None)
        # anndata 0.13 exposes X as layers[None]; leave it out
        keys = sorted(str(k) for k in (m.keys() if m is not None else []) if k is not None)
        if keys:
            parts.append("%s=%s" % (attr, keys))
    if a.raw is not None:
        parts.append("raw=%dx%d" % a.raw.shape)
    parts.append("uns=%s" % sorted(a.uns.keys()))
    return ", ".join(parts)


def dtypes_of(df):
    out = {"__index__": str(getattr(df.index, "dtype", ""))}
    for c in df.columns:
        out[str(c)] = str(df[c].dtype)
    return out


# --------------------------------------------------------------------------
# extras
# --------------------------------------------------------------------------
def extra_objects(D, chosen):
    """[(name, callable building the object, description[, write kwargs])]."""
    out = []
    out.append(
        (
            "denseX",
            lambda: build(D, chosen, X="dense"),
            "dense float32 X (otherwise like the main file)",
        )
    )

    def no_x():
        a = build(D, chosen, X=None)
        return a

    out.append(("noX", no_x, "X=None (layers, obs, var, obsm, ... kept)"))

    def empty():
        a = build(D, chosen)
        return a[:0].copy()

    out.append(("empty", empty, "0 cells x %d genes, sliced from the main object" % N_VARS))

    def awk():
        import awkward as ak

        a = build(D, chosen)
        offs = np.concatenate([[0], np.cumsum(D.ragged_lengths)])
        arr = ak.unflatten(ak.Array(D.ragged_values), D.ragged_lengths)
        assert len(arr) == a.n_obs and offs[-1] == len(D.ragged_values)
        a.obsm["ragged"] = arr
        return a

    out.append(("awkward", awk, "main object + obsm['ragged']: awkward var * float32 ragged array"))

    def nullstr():
        a = build(D, chosen)
        sd = pd.StringDtype()
        a.obs_names = pd.Index(list(D.obs_names), dtype=sd)
        a.var_names = pd.Index(list(D.var_names), dtype=sd)
        a.obs["donor"] = pd.array(list(D.donor), dtype=sd)
        a.obs["cell_label"] = pd.array(list(D.cell_label), dtype=sd)
        a.obs["note"] = nullable("string", D)
        a.var["gene_ids"] = pd.array([D.gene_ids[i] for i in D.keep], dtype=sd)
        return a

    out.append(
        (
            "nullstr",
            nullstr,
            "obs/var index and obs donor/cell_label/note + var gene_ids as pd.StringDtype() ('string', pd.NA; "
            "note has NAs); written with convert_strings_to_categoricals=False so they stay strings on disk",
            {"keep_strings": True},
        )
    )
    return out


# --------------------------------------------------------------------------
# optional real scanpy pipeline
# --------------------------------------------------------------------------
def scanpy_object(D):
    import scanpy as sc

    sc.settings.verbosity = 0
    obs = pd.DataFrame(
        {"cell_type": cat(D.cell_type_codes, CELL_TYPES)}, index=pd.Index(list(D.obs_names))
    )
    obs["batch"] = cat(D.batch_codes, BATCHES)
    var = pd.DataFrame({"gene_ids": list(D.gene_ids)}, index=pd.Index(list(D.raw_var_names)))
    a = ad.AnnData(D.raw_counts.copy(), obs=obs, var=var)
    sc.pp.calculate_qc_metrics(a, inplace=True, percent_top=None, log1p=False)
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.raw = a
    sc.pp.highly_variable_genes(a, n_top_genes=N_VARS)
    a = a[:, a.var["highly_variable"].values].copy()
    sc.tl.pca(a, n_comps=N_PCS, random_state=0)
    sc.pp.neighbors(a, n_neighbors=N_NEIGHBORS, n_pcs=N_PCS, random_state=0)
    sc.tl.umap(a, random_state=0)
    sc.tl.rank_genes_groups(a, "cell_type", method="t-test", n_genes=N_RANK_GENES)
    a.uns["cell_type_colors"] = list(CELL_TYPE_COLORS)
    return a


# --------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("outdir")
    p.add_argument("--tag", default=None, help="file-name stem, default anndata-<version>")
    p.add_argument(
        "--formats", default=None, help="comma list of h5ad,zarr2,zarr3 (default: all supported)"
    )
    p.add_argument(
        "--extras", action="store_true", help="also write denseX/noX/empty/awkward/nullstr files"
    )
    p.add_argument(
        "--extra-formats", default=None, help="formats for the extras (default: h5ad + newest zarr)"
    )
    p.add_argument(
        "--scanpy", action="store_true", help="also write a file produced by a real scanpy pipeline"
    )
    p.add_argument(
        "--meta-dir", default=None, help="where to write <tag>.json (default OUTDIR/../meta)"
    )
    args = p.parse_args(argv)

    configure_settings()
    tag = args.tag or "anndata-%s" % AD_VERSION
    fmts = args.formats.split(",") if args.formats else default_formats()
    outdir = os.path.abspath(args.outdir)
    meta_dir = os.path.abspath(args.meta_dir or os.path.join(outdir, os.pardir, "meta"))
    for d in (outdir, meta_dir):
        if not os.path.isdir(d):
            os.makedirs(d)

    D = Data()
    meta = {
        "tag": tag,
        "anndata": AD_VERSION,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "h5py": dist_version("h5py"),
        "zarr": ZARR_VERSION,
        "scipy": dist_version("scipy"),
        "numcodecs": dist_version("numcodecs"),
        "awkward": dist_version("awkward"),
        "scanpy": dist_version("scanpy"),
        "settings": settings_snapshot(),
        "packages": all_dists(),
        "files": {},
    }
    tmpdir = tempfile.mkdtemp(prefix="corpus-probe-")
    try:

        def emit(fname, fmt, obj_fn, kind, features, dropped, notes, wkw=None):
            path = os.path.join(outdir, fname)
            entry = {
                "format": fmt,
                "kind": kind,
                "features": features,
                "dropped": dropped,
                "notes": notes,
            }
            try:
                a = obj_fn()
                write(a, path, fmt, **(wkw or {}))
                try:
                    b = read(path, fmt)
                except Exception as e:
                    entry["self_read_error"] = short_err(e)
                    b = a
                entry["shape"] = list(b.shape)
                if "self_read_error" not in entry:
                    missing = [
                        f.split(" (")[0] for f in features if not present(b, f.split(" (")[0])
                    ]
                    if missing:
                        entry["missing_after_read"] = missing
                entry["contents"] = describe(b)
                entry["obs_dtypes"] = dtypes_of(b.obs)
                entry["var_dtypes"] = dtypes_of(b.var)
                size, nfiles = du(path)
                entry["size_bytes"] = size
                entry["n_files"] = nfiles
                meta["files"][fname] = entry
                print(
                    "wrote %-45s %8d bytes %4d files  %s" % (fname, size, nfiles, entry["contents"])
                )
            except Exception as e:
                remove(path)
                print("FAILED %s: %s" % (fname, short_err(e)))
                traceback.print_exc()
                meta.setdefault("failed", {})[fname] = short_err(e)

        chosen_by_fmt = {}
        for fmt in fmts:
            chosen, dropped = select_features(D, fmt, tmpdir)
            chosen_by_fmt[fmt] = chosen
            feats = ["%s (%s)" % (n, l) for n, l, _ in chosen]
            suffix = "-v3" if fmt == "zarr3" else ""
            fname = tag + suffix + ext(fmt)
            emit(fname, fmt, lambda: build(D, chosen), "main", feats, dropped, "")

        if args.extras:
            if args.extra_formats:
                efmts = args.extra_formats.split(",")
            else:
                efmts = ["h5ad"] + ([f for f in fmts if f.startswith("zarr")][-1:])
            for fmt in efmts:
                chosen = chosen_by_fmt[fmt]
                feats = ["%s (%s)" % (n, l) for n, l, _ in chosen]
                for ex in extra_objects(D, chosen):
                    ename, obj_fn, desc = ex[:3]
                    wkw = ex[3] if len(ex) > 3 else None
                    suffix = "-v3" if fmt == "zarr3" else ""
                    fname = "%s-%s%s%s" % (tag, ename, suffix, ext(fmt))
                    emit(fname, fmt, obj_fn, ename, feats, {}, desc, wkw)

        if args.scanpy:
            try:
                import scanpy as sc  # noqa: F401

                sv = dist_version("scanpy")
                for fmt in fmts:
                    suffix = "-v3" if fmt == "zarr3" else ""
                    fname = "%s-scanpy-%s%s%s" % (tag, sv, suffix, ext(fmt))
                    emit(
                        fname,
                        fmt,
                        lambda: scanpy_object(D),
                        "scanpy",
                        [],
                        {},
                        "real scanpy %s pipeline: calculate_qc_metrics, normalize_total, log1p, raw, "
                        "highly_variable_genes(n_top_genes=%d)+subset, pca, neighbors, umap, "
                        "rank_genes_groups(t-test)" % (sv, N_VARS),
                    )
            except ImportError as e:
                print("scanpy not importable: %s" % e)
                meta["scanpy_error"] = short_err(e)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    with open(os.path.join(meta_dir, tag + ".json"), "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.write("\n")
    if meta.get("failed"):
        print("some files failed: %s" % sorted(meta["failed"]))
    return 1 if meta.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
