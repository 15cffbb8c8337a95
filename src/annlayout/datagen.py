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


def make_dataset(
    n_obs: int = 50_000,
    n_vars: int = 20_000,
    *,
    nnz_per_cell: float = 900.0,
    n_pcs: int = 50,
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
            "mean_counts": np.asarray(X.mean(axis=0)).ravel(),
        },
        index=pd.Index([f"ENSG{i:011d}" for i in range(n_vars)]),
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if n_pcs and n_obs:
        adata.obsm["X_pca"] = rng.standard_normal((n_obs, n_pcs), dtype=np.float32)
    adata.uns["generator"] = {"name": "annlayout.datagen", "seed": seed}
    return adata
