"""Synthetic single-cell datasets with realistic structure, for demos, tests and benchmarks.

Counts are skewed the way real ones are: a few genes are expressed in most cells and most genes
in few (Zipf-like gene popularity), library sizes vary log-normally between cells, and values
are small integers with a long tail. The default shape (50,000 cells x 20,000 genes, about
45M nonzeros) matches the measurements in design.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from annlayout.base.errors import GenerateError

# One embedding width for single datasets and collection parts alike: what generate writes
# is combined (concat, append) with what it wrote before, and obsm columns must line up.
N_PCS = 50


def make_dataset(
    n_obs: int = 50_000,
    n_vars: int = 20_000,
    *,
    nnz_per_cell: float = 900.0,
    n_pcs: int = N_PCS,
    seed: int = 0,
):
    """An AnnData with CSR float32 counts in X, obs/var annotations and an ``X_pca`` in obsm."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    nnz_per_cell = min(nnz_per_cell, n_vars)
    width = max(n_vars, 1)
    # cells: log-normal library sizes; draws repeat popular genes, so draw ~30% more
    library = rng.lognormal(np.log(nnz_per_cell * 1.3) - 0.08, 0.4, size=n_obs)
    per_cell = np.clip(np.round(library), 1 if n_vars else 0, n_vars).astype(np.int64)
    # genes: power-law popularity (rank r drawn with weight r^-0.8, by inverting its CDF),
    # ranks mapped to shuffled gene positions so popular genes are spread over the index
    u = rng.random(int(per_cell.sum()))
    top = (width + 1) ** 0.2 - 1
    rank = np.minimum(((1 + u * top) ** 5).astype(np.int64) - 1, width - 1)
    genes = rng.permutation(width)[rank]
    keys = np.repeat(np.arange(n_obs, dtype=np.int64) * width, per_cell) + genes
    keys.sort()
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys
    rows, cols = np.divmod(keys, width)
    values = (rng.geometric(0.45, size=keys.size) + rng.poisson(0.3, keys.size)).astype(np.float32)
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_obs), out=indptr[1:])
    X = sp.csr_matrix((values, cols.astype(np.int32), indptr), shape=(n_obs, n_vars))

    n_types = 20
    type_weights = rng.dirichlet(np.ones(n_types) * 0.7)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(
                rng.choice(n_types, size=n_obs, p=type_weights),
                categories=[f"type_{i:02d}" for i in range(n_types)],
            ),
            "batch": pd.Categorical.from_codes(
                rng.integers(0, 8, n_obs), categories=[f"batch_{i}" for i in range(8)]
            ),
            "total_counts": np.asarray(X.sum(axis=1)).ravel(),
            "n_genes": np.diff(indptr).astype(np.int32),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_obs)]),
    )
    var = pd.DataFrame(
        {
            "gene_symbol": [f"G{i}" for i in range(n_vars)],
            "highly_variable": rng.random(n_vars) < 0.1,
            "mean_counts": np.asarray(X.sum(axis=0)).ravel() / max(n_obs, 1),  # 0 cells: 0
        },
        index=pd.Index([f"ENSG{i:011d}" for i in range(n_vars)]),
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if n_pcs:  # (0, n_pcs) too: an empty dataset combines with others like any
        adata.obsm["X_pca"] = rng.standard_normal((n_obs, n_pcs), dtype=np.float32)
    adata.uns["generator"] = {"name": "annlayout.generate.synthetic", "seed": seed}
    return adata


def make_part(
    part: int,
    n_obs: int,
    n_vars: int,
    *,
    gene_share: float = 0.9,
    nnz_per_cell: float = 300.0,
    n_pcs: int = N_PCS,
    seed: int = 0,
):
    """File ``part`` of a synthetic collection: what a lab's runs or an atlas download look
    like side by side, so that combining them has real work to do.

    Every part draws its genes from one universe of ``n_vars`` (names shared across parts) but
    keeps a different ``gene_share`` of them, in a different order; its cell types are a
    different subset of the universe's; its obs names (barcodes) repeat between parts; it
    carries ``sample`` (which run) and the universe's ``X_pca`` width. Deterministic in
    (part, seed).
    """
    part_seed = np.random.SeedSequence([seed, part]).generate_state(1)[0]
    rng = np.random.default_rng(part_seed)
    kept = max(1, round(n_vars * gene_share)) if n_vars else 0
    genes = np.sort(rng.choice(n_vars, kept, replace=False)) if n_vars else np.zeros(0, int)
    order = rng.permutation(kept)  # files list their genes in orders of their own
    adata = make_dataset(n_obs, kept, nnz_per_cell=nnz_per_cell, n_pcs=n_pcs, seed=int(part_seed))
    universe = pd.Index([f"ENSG{i:011d}" for i in range(n_vars)])
    adata.var.index = universe[genes]
    adata.var["gene_symbol"] = [f"G{i}" for i in genes]
    adata = adata[:, order].copy()
    adata.X.sort_indices()  # column selection leaves them unsorted; writers sort theirs
    types = adata.obs["cell_type"].cat.categories
    present = sorted(rng.choice(len(types), max(2, len(types) * 3 // 4), replace=False))
    codes = rng.integers(0, len(present), n_obs)
    adata.obs["cell_type"] = pd.Categorical.from_codes(codes, categories=types[present])
    adata.obs["sample"] = pd.Categorical([f"sample_{part:03d}"] * n_obs)
    adata.obs.index = pd.Index([f"barcode_{i}" for i in range(n_obs)])
    adata.uns["generator"] = {"name": "annlayout.generate.synthetic", "seed": seed, "part": part}
    return adata


def check_sizes(n_obs: int, n_vars: int, nnz_per_cell: float, n_files: int | None) -> None:
    """Refuse, naming the option, sizes that describe no dataset. Zero cells or zero genes
    are allowed (anndata reads and writes 0 x n and n x 0, and pipelines meet them); a
    collection's files each get a cell at least, as files with none are rarely meant."""
    if n_obs < 0:
        raise GenerateError(f"--cells {n_obs}: the number of cells cannot be negative")
    if n_vars < 0:
        raise GenerateError(f"--genes {n_vars}: the number of genes cannot be negative")
    if not nnz_per_cell > 0:  # also NaN
        raise GenerateError(f"--nnz-per-cell {nnz_per_cell}: the mean must be above 0")
    if n_files is not None:
        collection_sizes(n_obs, n_files)


def collection_sizes(n_obs: int, n_files: int) -> list[int]:
    """Cells per file: ``n_obs`` split over ``n_files`` as evenly as whole cells allow."""
    if n_files < 1:
        raise GenerateError(f"--files {n_files}: a collection needs at least one file")
    if n_obs < n_files:
        raise GenerateError(
            f"--cells {n_obs} --files {n_files}: fewer cells than files; give at least "
            f"{n_files} cells, one per file"
        )
    base, extra = divmod(n_obs, n_files)
    return [base + (1 if i < extra else 0) for i in range(n_files)]
