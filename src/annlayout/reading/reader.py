"""Layout-aware reads: ``annlayout.open(path_or_url)`` and selections that pick an orientation.

``handle.X[rows, cols]`` takes ints, slices, boolean masks, integer arrays and obs/var names
on either axis. For a sparse matrix with a second orientation it estimates, from the two
indptrs, how many nonzeros each orientation must read for the selection and reads the
cheaper one; a stale copy (see :mod:`annlayout.write.copies`) is skipped with a warning. Rows (or
columns) are gathered as runs of nonzero positions, and the chunks those runs touch are
fetched and decoded together by :mod:`annlayout.storage.chunks` (zarr's own selection where it
cannot), not row by row. obs and var names are read only for selections by name.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from annlayout.base.errors import NotAnnDataError
from annlayout.format.encodings import attr, encoding_of, is_group, sparse_shape
from annlayout.format.registry import Encoding, get
from annlayout.reading.loader import AsyncBatches, Batches, abatches, batches
from annlayout.storage.remote import codec_pipeline_for
from annlayout.storage.stores import check_anndata_root, open_store
from annlayout.write.copies import copy_group, stale_reason


class StaleCopyWarning(UserWarning):
    """A second orientation no longer mirrors its primary; reads use the primary."""


def open(location: Any) -> Dataset:
    """A lazy handle on an AnnData store (h5ad, zarr v2/v3, local or ``s3://``).

    Opening reads the root metadata only; indexes, indptrs and columns are read when used.
    """
    root = open_store(location)
    check_anndata_root(root, location)  # one-line errors for non-AnnData or incomplete stores
    return Dataset(root, str(location))


class Dataset:
    def __init__(self, root: Any, source: str):
        self._root, self.source = root, source

    def __repr__(self) -> str:
        return f"annlayout.Dataset({self.source!r}, shape={self.shape})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled as its location and opened again where it is unpickled (a DataLoader
        worker started by spawn): store handles (h5py files) do not cross processes."""
        return open, (self.source,)

    def batches(self, batch_size: int = 4096, **options: Any) -> Batches:
        """Shuffled minibatches of X (or ``layer=``) for training: see
        :func:`annlayout.reading.loader.batches` for the options."""
        return batches([self], batch_size, **options)

    def abatches(self, batch_size: int = 4096, **options: Any) -> AsyncBatches:
        """:meth:`batches` as an async iterable on the caller's event loop: chunks are
        fetched there and decoded on the read pool's threads, the loop never waits."""
        return abatches([self], batch_size, **options)

    @cached_property
    def obs(self) -> Frame:
        return self._frame("obs")

    @cached_property
    def var(self) -> Frame:
        return self._frame("var")

    @cached_property
    def _upgraded(self) -> Any:
        """The store as anndata reads it, arrays left in place: for legacy forms only."""
        from annlayout.format.encodings import legacy_forms, read_upgraded

        if not legacy_forms(self._root):
            return None
        return read_upgraded(self._root, large=lambda path, node: True).adata

    def _frame(self, axis: str) -> Frame:
        if self._upgraded is not None:  # compound datasets, __categories, uns categories
            return LoadedFrame(getattr(self._upgraded, axis))
        return Frame(self._root[axis])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.obs), len(self.var)

    @cached_property
    def X(self) -> Matrix | None:
        return Matrix(self._root["X"], self) if "X" in self._root else None

    @cached_property
    def layers(self) -> Mapping[str, Matrix]:
        group = self._root["layers"] if "layers" in self._root else {}  # noqa: SIM401
        return {key: Matrix(group[key], self) for key in group}

    @cached_property
    def obsm(self) -> Mapping[str, Matrix]:
        group = self._root["obsm"] if "obsm" in self._root else {}  # noqa: SIM401
        if not is_group(group) and self._upgraded is not None:  # anndata < 0.7: one record array
            group = dict(self._upgraded.obsm)
        return {key: Matrix(group[key], self, var_axis=False) for key in group}

    @cached_property
    def raw(self) -> Raw | None:
        """raw as anndata reads it: ``raw.X`` lazy, ``raw.var`` and ``raw.varm`` read; None
        where the store has no raw."""
        if self._upgraded is not None:
            if self._upgraded.raw is None:
                return None
            # a legacy raw (anndata < 0.7) is read whole, upgraded, as anndata reads it
            raw = self._read_upgraded(keep_raw_x=True).raw
            return Raw(LoadedMatrix(raw.X, self.obs, LoadedFrame(raw.var)), raw.var, dict(raw.varm))
        if "raw" not in self._root or "X" not in self._root["raw"]:
            return None
        from anndata.io import read_elem

        group = self._root["raw"]
        var = read_elem(group["var"]) if "var" in group else pd.DataFrame()
        varm: dict[str, Any] = read_elem(group["varm"]) if "varm" in group else {}  # type: ignore[assignment]
        # raw's columns are raw's genes, not X's: named by raw/var
        return Raw(Matrix(group["X"], self, columns=Frame(group["var"])), var, varm)

    def matrix(self, element: str) -> Matrix | LoadedMatrix | None:
        """``X``, ``layers/NAME`` or ``raw/X`` by its path, or None where the store has none."""
        if element == "X":
            return self.X
        if element == "raw/X":
            return self.raw.X if self.raw is not None else None
        if element.startswith("layers/"):
            return self.layers.get(element.split("/", 1)[1])
        raise ValueError(f"{element}: not a matrix path (X, layers/NAME or raw/X)")

    def _read_upgraded(self, *, keep_raw_x: bool) -> Any:
        """A legacy store as anndata reads it, read in full but for X and the layers (and
        raw's X unless ``keep_raw_x``), which stay stand-ins."""
        from annlayout.format.encodings import read_upgraded

        def matrix(path: str, node: Any) -> bool:
            return path == "X" or path.startswith("layers/") or (path == "raw/X" and not keep_raw_x)

        return read_upgraded(self._root, large=matrix).adata

    def small_elements(self) -> Any:
        """An AnnData of obs, var, obsm, varm, varp and uns as anndata reads them
        (categoricals kept, legacy forms upgraded), without X, layers and obsp."""
        import anndata as ad

        keys = ("obs", "var", "obsm", "varm", "varp", "uns")
        if self._upgraded is not None:  # read again: only the matrices left as stand-ins
            upgraded = self._read_upgraded(keep_raw_x=False)
            found = {key: getattr(upgraded, key) for key in keys}
        else:
            from anndata.io import read_elem

            found = {key: read_elem(self._root[key]) for key in keys if key in self._root}
        elements: dict[str, Any] = {
            k: v if k in ("obs", "var") else dict(v) for k, v in found.items()
        }
        return ad.AnnData(**elements)

    def to_adata(self, obs: Any = slice(None), var: Any = slice(None)) -> Any:
        """An in-memory AnnData of a selection, with its obs, var and obsm rows."""
        import anndata as ad

        rows = self.obs.positions(obs)
        cols = self.var.positions(var)
        obsm = {}
        for key, matrix in self.obsm.items():
            if matrix.is_matrix:
                obsm[key] = matrix[rows, :]
        return ad.AnnData(
            X=None if self.X is None else self.X[rows, cols],
            obs=self.obs.rows(rows),
            var=self.var.rows(cols),
            obsm=obsm,
        )


@dataclass(frozen=True)
class Raw:
    """A store's raw, as ``adata.raw``: its X (lazy, selected like ``Dataset.X``), var, varm."""

    X: Matrix | LoadedMatrix
    var: pd.DataFrame
    varm: dict[str, Any]


class Frame:
    """obs or var: the index read once, columns read when asked for."""

    def __init__(self, group: Any):
        self._group = group

    @cached_property
    def index(self) -> pd.Index:
        from anndata.io import read_elem

        name = attr(self._group, "_index")
        return pd.Index(read_elem(self._group[name]))

    @cached_property
    def columns(self) -> list[str]:
        return list(attr(self._group, "column-order") or [])

    def __repr__(self) -> str:
        shown = ", ".join(self.columns[:8]) + (", ..." if len(self.columns) > 8 else "")
        return f"annlayout.Frame: {len(self):,} rows x {len(self.columns)} columns ({shown})"

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), len(self.columns)

    def head(self, n: int = 5) -> pd.DataFrame:
        """The first ``n`` rows, as pandas' ``head`` (only they are read)."""
        return self.rows(np.arange(min(n, len(self))))

    def to_pandas(self) -> pd.DataFrame:
        """Every row and column, as anndata reads them (the whole frame is read)."""
        return self.rows(np.arange(len(self)))

    def __len__(self) -> int:
        if "index" in self.__dict__:
            return len(self.index)
        # from the index array's shape: a slice or integer selection reads no names
        length = _stored_length(self._group[attr(self._group, "_index")])
        return len(self.index) if length is None else length

    def __getitem__(self, column: str) -> pd.Series:
        from anndata.io import read_elem

        if column not in self.columns:
            raise KeyError(f"{column!r} is not a column (columns: {', '.join(self.columns)})")
        # built as anndata's read_dataframe builds it, so pandas gives the column the dtype
        # it gives there (object or str strings, as the pandas version and its options say)
        value = read_elem(self._group[column])
        return pd.DataFrame({column: value}, index=self.index)[column]

    def rows(self, positions: np.ndarray) -> pd.DataFrame:
        """The rows at ``positions``, each column keeping its dtype (categorical, nullable,
        pandas strings): what anndata reads for the same rows."""
        index = self.index[positions]
        columns = {}
        for name in self.columns:
            column = self[name]
            columns[name] = pd.Series(column.iloc[positions].array, index=index, dtype=column.dtype)
        return pd.DataFrame(columns, index=index)

    @cached_property
    def _lookup(self) -> pd.Series:
        return pd.Series(np.arange(len(self.index)), index=self.index)

    def positions(self, key: Any) -> np.ndarray:
        """Any selector (int, slice, mask, ints, names) as an array of positions."""
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        if isinstance(key, str):
            key = [key]
        if np.isscalar(key):
            key = [key]
        key = np.asarray(key)
        if key.dtype == bool:
            if key.size != n:
                raise IndexError(f"boolean mask of length {key.size} for an axis of {n}")
            return np.flatnonzero(key)
        if key.dtype.kind in "OUST":
            missing = [k for k in key.tolist() if k not in self._lookup.index]
            if missing:
                raise KeyError(f"not in the index: {', '.join(map(str, missing[:5]))}")
            return self._lookup.loc[key].to_numpy()
        positions = key.astype(np.int64)
        if positions.size and (positions.max() >= n or positions.min() < -n):
            raise IndexError(f"index out of range for an axis of {n}")
        return np.where(positions < 0, positions + n, positions)


def _stored_length(node: Any) -> int | None:
    """Length of a 1-D element from its metadata: an array, or the values of a nullable
    array (pandas 3's strings) or the codes of a categorical; None for anything else."""
    if not is_group(node):
        return int(node.shape[0]) if len(node.shape) == 1 else None
    for member in ("values", "codes"):
        if member in node and not is_group(node[member]):
            return _stored_length(node[member])
    return None


class LoadedFrame(Frame):
    """obs or var of a legacy store, read whole by anndata (they are small there)."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame

    @cached_property
    def index(self) -> pd.Index:
        return self._frame.index

    @cached_property
    def columns(self) -> list[str]:
        return [str(c) for c in self._frame.columns]

    def __len__(self) -> int:
        return len(self._frame)

    def __getitem__(self, column: str) -> pd.Series:
        if column not in self.columns:
            raise KeyError(f"{column!r} is not a column (columns: {', '.join(self.columns)})")
        return self._frame[column]


class LoadedMatrix:
    """A matrix already in memory (a legacy raw's X), with :class:`Matrix`'s row reads."""

    def __init__(self, value: Any, rows: Frame, columns: Frame):
        self._value, self._rows, self._columns = value, rows, columns
        self.encoding = "csr_matrix" if sp.issparse(value) else "array"
        self.is_matrix, self.sparse = True, bool(sp.issparse(value))
        self.shape = tuple(value.shape)
        self.dtype = np.dtype(value.dtype)
        self.nnz = int(value.nnz) if sp.issparse(value) else int(np.prod(value.shape))

    def __getitem__(self, key: Any) -> Any:
        rows_key, cols_key = key if isinstance(key, tuple) else (key, slice(None))
        rows, cols = self._rows.positions(rows_key), self._columns.positions(cols_key)
        block = self._value[rows][:, cols]
        return sp.csr_matrix(block) if sp.issparse(block) else np.asarray(block)

    def rows(self, start: int, stop: int) -> Any:
        block = self._value[start:stop]
        return sp.csr_matrix(block) if sp.issparse(block) else np.asarray(block)

    def warm(self) -> None:
        """Nothing to read ahead: it is in memory."""


class Matrix:
    """X, a layer or an obsm entry: sparse (with or without a second orientation) or dense."""

    def __init__(
        self, node: Any, dataset: Dataset, *, var_axis: bool = True, columns: Frame | None = None
    ):
        self._node, self._dataset, self._var_axis = node, dataset, var_axis
        self._columns = columns  # names of the columns, when not the dataset's var
        self.encoding = encoding_of(node) or "array"
        # another tool's encoding is not a matrix, as an awkward array or a dataframe is not
        spec: Encoding | None = get(self.encoding)
        self.is_matrix = spec is not None and spec.matrix
        self.sparse = spec is not None and spec.sparse
        self._orientation = spec.orientation if spec is not None else None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.sparse:
            return sparse_shape(self._node)
        if not self.is_matrix:  # an awkward array or a dataframe in obsm
            raise TypeError(f"{self._node.name}: a {self.encoding} element is not a matrix")
        return tuple(self._node.shape)

    def __getitem__(self, key: Any) -> Any:
        rows_key, cols_key = key if isinstance(key, tuple) else (key, slice(None))
        rows = self._dataset.obs.positions(rows_key)
        if self._var_axis:
            cols = (self._columns or self._dataset.var).positions(cols_key)
        else:
            cols = np.arange(self.shape[1])[cols_key] if isinstance(cols_key, slice) else (
                np.asarray([cols_key]).ravel().astype(np.int64)
            )  # fmt: skip
        if self.sparse:
            return self._sparse(rows, cols)
        if not self.is_matrix:
            raise TypeError(f"{self._node.name}: cannot select from a {self.encoding} element")
        return _dense_take(self._node, rows, cols)

    async def aread(self, rows: Any, cols: Any = slice(None)) -> Any:
        """``self[rows, cols]`` awaited on the caller's event loop: a sparse matrix's
        chunks (and a dense zarr array's, through zarr's ``AsyncArray``) are fetched there
        and decoded on the read pool's threads; what has no async API (h5py, obs and var
        names, the metadata and offsets read once per handle) is read on a worker thread.
        The loop is never blocked, and zarr's ``sync`` is never entered from it."""
        rows, cols = await asyncio.to_thread(
            lambda: (self._dataset.obs.positions(rows), self._column_positions(cols))
        )
        if self.sparse:
            await self.aprepare()
            return await self._asparse(rows, cols)
        if self.encoding != "array":
            raise TypeError(f"{self._node.name}: cannot select from a {self.encoding} element")
        if _async_array(self._node) is None:
            return await asyncio.to_thread(_dense_take, self._node, rows, cols)
        unique, inverse = np.unique(rows, return_inverse=True)
        selection = (unique,) if len(self._node.shape) == 1 else (unique, cols)
        block = await _on_store_loop(
            self._node, _async_array(self._node).get_orthogonal_selection(selection)
        )
        return np.asarray(block)[inverse]

    async def aprepare(self) -> None:
        """Read now, without blocking the caller's loop, what the first read of a handle
        otherwise reads: the offsets (indptr) and every shard index."""
        if not self.sparse:
            return
        if "_orientations" not in self.__dict__:
            await asyncio.to_thread(lambda: self._orientations)
        for arrays, _ in self._orientations.values():
            await arrays.awarm()

    async def atake(self, rows: np.ndarray) -> Any:
        """:meth:`take` awaited on the caller's event loop (the loader's async core)."""
        if self.sparse:
            await self.aprepare()
            return await self._asparse(rows, np.arange(self.shape[1]))
        runs = _runs(rows, rows + 1)
        array = _async_array(self._node)
        if array is None or not runs:
            return await asyncio.to_thread(self.take, rows)
        blocks = await _on_store_loop(
            self._node, asyncio.gather(*(array.getitem(slice(a, b)) for a, b in runs))
        )
        return np.concatenate([np.asarray(b) for b in blocks])

    def _column_positions(self, cols_key: Any) -> np.ndarray:
        if self._var_axis:
            return (self._columns or self._dataset.var).positions(cols_key)
        if isinstance(cols_key, slice):
            return np.arange(self.shape[1])[cols_key]
        return np.asarray([cols_key]).ravel().astype(np.int64)

    def take(self, rows: np.ndarray) -> Any:
        """Rows at sorted, distinct positions with every column (the loader's buffers):
        CSR for a sparse matrix, an array else."""
        if self.sparse:
            return self._sparse(rows, np.arange(self.shape[1]))
        if not self.is_matrix:
            raise TypeError(f"{self._node.name}: cannot select from a {self.encoding} element")
        runs = _runs(rows, rows + 1)
        if not runs:
            return np.zeros((0, *self.shape[1:]), self.dtype)
        return np.concatenate([np.asarray(self._node[a:b]) for a, b in runs])

    @property
    def orientations(self) -> Sequence[str]:
        """The orientations a read may use: ``csr``/``csc`` (a stale copy left out), or
        ``dense``."""
        if not self.sparse:
            return ("dense",)
        return tuple(self._orientations)

    def indptr(self) -> np.ndarray:
        """The row offsets of a sparse matrix's CSR orientation, in memory."""
        return self._orientations["csr"][1]

    def chunk_starts(self) -> np.ndarray | None:
        """The rows at which the row-major chunks begin, with 0 and the row count: for a
        sparse matrix, the first row whose nonzeros start in each chunk of its CSR
        ``data``; for a dense one, every chunk's first row. Rows between two of them read
        whole chunks (a row straddling two chunks belongs to the first). None where the
        values are not chunked (a contiguous h5py dataset: any run of rows reads alone)."""
        n = self.shape[0]
        if self.sparse:
            if "csr" not in self._orientations:
                return np.array([0, n])
            arrays, indptr = self._orientations["csr"]
            length, nnz = arrays.chunk_len("data"), int(indptr[-1])
            if length is None:
                return None
            starts = np.searchsorted(indptr[:-1], np.arange(0, nnz, max(1, length)))
        else:
            chunks = getattr(self._node, "chunks", None)
            if not chunks:
                return None
            starts = np.arange(0, n, max(1, int(chunks[0])))
        return np.unique(np.concatenate([starts, [0, n]])).astype(np.int64)

    @property
    def dtype(self) -> np.dtype:
        values = self._node["data"] if self.sparse else self._node
        return np.dtype(values.dtype)

    @property
    def nnz(self) -> int:
        """Stored values: nonzeros of a sparse matrix, every value of a dense one."""
        if self.sparse:
            return int(self._node["data"].shape[0])
        return int(np.prod(self.shape))

    def rows(self, start: int, stop: int) -> Any:
        """Rows ``start:stop`` with every column: CSR for a sparse matrix, an array else."""
        positions = np.arange(start, stop)
        if self.sparse:
            return self._sparse(positions, np.arange(self.shape[1]))
        return np.asarray(self._node[start:stop])

    # -- sparse ------------------------------------------------------------------------

    @cached_property
    def _orientations(self) -> dict[str, tuple[_Arrays, np.ndarray]]:
        """Usable orientations: name -> (its data and indices, indptr in memory)."""
        primary = self._orientation
        assert primary is not None  # read for sparse matrices only
        indptr = self._node["indptr"][...]
        pipeline = codec_pipeline_for("zarrs", self._dataset.source)
        found: dict[str, tuple[_Arrays, np.ndarray]] = {
            primary: (_Arrays(self._node, pipeline), indptr)
        }
        copy = copy_group(self._node)
        if copy is not None:
            reason = stale_reason(self._node, copy, indptr)
            if reason:
                warnings.warn(
                    f"{self._node.name}: ignoring its stale {copy.name.rpartition('/')[2]} copy "
                    f"({reason}); reading the primary",
                    StaleCopyWarning,
                    stacklevel=4,
                )
            else:
                found[copy.name.rpartition("/")[2]] = (_Arrays(copy, pipeline), copy["indptr"][...])
        return found

    def warm(self) -> None:
        """Read now what a handle otherwise reads on first use: the indptrs and, for sharded
        zarr arrays, every shard index (one small request per shard)."""
        for arrays, _ in self._orientations.values():
            arrays.warm()

    def cost(self, orientation: str, rows: np.ndarray, cols: np.ndarray) -> int:
        """Nonzeros an orientation reads for a selection (its major axis selects ranges)."""
        _, indptr = self._orientations[orientation]
        major = rows if orientation == "csr" else cols
        return int(np.sum(indptr[major + 1] - indptr[major]))

    def choose(self, rows: np.ndarray, cols: np.ndarray) -> str:
        return min(self._orientations, key=lambda o: self.cost(o, rows, cols))

    def _sparse(self, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
        orientation = self.choose(rows, cols)
        arrays, indptr = self._orientations[orientation]
        major = rows if orientation == "csr" else cols
        unique = np.unique(major)
        return self._assemble(orientation, rows, cols, _gather(arrays, indptr, unique))

    async def _asparse(self, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
        """:meth:`_sparse` awaited on the caller's event loop."""
        orientation = self.choose(rows, cols)
        arrays, indptr = self._orientations[orientation]
        unique = np.unique(rows if orientation == "csr" else cols)
        gathered = await _agather(arrays, indptr, unique)
        return self._assemble(orientation, rows, cols, gathered)

    def _assemble(
        self, orientation: str, rows: np.ndarray, cols: np.ndarray, gathered: Any
    ) -> sp.csr_matrix:
        """The selection as CSR from the sorted distinct majors' ``gathered`` arrays."""
        data, indices, sub_indptr = gathered
        major, minor = (rows, cols) if orientation == "csr" else (cols, rows)
        n_minor = self.shape[1] if orientation == "csr" else self.shape[0]
        unique, inverse = np.unique(major, return_inverse=True)
        cls = sp.csr_matrix if orientation == "csr" else sp.csc_matrix
        shape = (unique.size, n_minor) if orientation == "csr" else (n_minor, unique.size)
        block = cls((data, indices, sub_indptr), shape=shape)
        # reorder or repeat majors, and select minors, only where the selection asks for it
        if not _is_identity(inverse, unique.size):
            block = block[inverse] if orientation == "csr" else block[:, inverse]
        if not _is_identity(minor, n_minor):
            block = block[:, minor] if orientation == "csr" else block[minor, :]
        return sp.csr_matrix(block)


def _is_identity(positions: np.ndarray, n: int) -> bool:
    return positions.size == n and bool(np.array_equal(positions, np.arange(n)))


class _Arrays:
    """data and indices of one orientation, with their chunk readers (and shard indexes)
    kept for the life of the handle."""

    def __init__(self, group: Any, pipeline: str | None):
        self.group, self.pipeline = group, pipeline
        self._arrays: dict[str, Any] = {}
        self._readers: dict[str, Any] = {}
        self._opening = threading.Lock()  # concat reads blocks of one matrix on two threads

    def _open(self, name: str) -> None:
        from annlayout.storage.chunks import chunk_reader
        from annlayout.storage.h5 import h5_reader

        with self._opening:
            if name in self._arrays:
                return
            if hasattr(self.group, "metadata"):  # zarr fixes the codec pipeline when it opens
                from annlayout.storage.pipeline import opening

                with opening(self.pipeline):  # an array: open it under zarrs
                    array = self.group[name]
            else:
                array = self.group[name]
            self._readers[name] = chunk_reader(array) or h5_reader(array)
            self._arrays[name] = array  # last: another thread takes it as opened

    def chunk_len(self, name: str) -> int | None:
        """Positions per chunk of ``name`` (a shard's inner chunk); None for a contiguous
        h5py dataset, which has none."""
        if name not in self._arrays:
            self._open(name)
        chunks = getattr(self._arrays[name], "chunks", None)
        if not chunks:
            return None
        reader = self._readers[name]
        return int(reader.chunk_len) if reader is not None else int(chunks[0])

    def warm(self) -> None:
        """Open both arrays and read every shard index now rather than on the first read."""
        for name in ("data", "indices"):
            if name not in self._arrays:
                self._open(name)
            if self._readers[name] is not None:
                self._readers[name].load_indexes()

    def read_both(
        self, runs: list[tuple[int, int]], index_dtype: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """data, and indices as ``index_dtype``, at ``runs``; from object storage both at
        once, so their round trips overlap and the link stays busy while either decodes."""
        for name in ("data", "indices"):
            if name not in self._arrays:
                self._open(name)
        if not all(self._remote(name) for name in ("data", "indices")):
            return self.read("data", runs), self.read("indices", runs, index_dtype)
        with ThreadPoolExecutor(1, thread_name_prefix="annlayout-indices") as other:
            indices = other.submit(self.read, "indices", runs, index_dtype)
            return self.read("data", runs), indices.result()

    async def aread_both(
        self, runs: list[tuple[int, int]], index_dtype: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_both` awaited on the caller's event loop (both at once)."""
        data, indices = await asyncio.gather(
            self.aread("data", runs), self.aread("indices", runs, index_dtype)
        )
        return data, indices

    async def aread(self, name: str, runs: list[tuple[int, int]], dtype: Any = None) -> np.ndarray:
        """:meth:`read` awaited: through the chunk reader on the caller's loop; arrays it
        cannot read (h5py, filters) through their own library on a worker thread."""
        if name not in self._arrays:
            await asyncio.to_thread(self._open, name)  # metadata: once per handle
        reader = self._readers[name]
        if reader is not None and hasattr(reader, "aread"):
            return await reader.aread(runs, dtype)
        return await asyncio.to_thread(self.read, name, runs, dtype)

    async def awarm(self) -> None:
        """:meth:`warm` awaited: shard indexes fetched on the caller's loop."""
        for name in ("data", "indices"):
            if name not in self._arrays:
                await asyncio.to_thread(self._open, name)
            reader = self._readers[name]
            if reader is not None and hasattr(reader, "aload_indexes"):
                await reader.aload_indexes()
            elif reader is not None:
                await asyncio.to_thread(reader.load_indexes)

    def _remote(self, name: str) -> bool:
        reader = self._readers[name]
        return reader is not None and reader.local_root is None

    def read(self, name: str, runs: list[tuple[int, int]], dtype: Any = None) -> np.ndarray:
        if name not in self._arrays:
            self._open(name)
        reader = self._readers[name]
        if reader is not None:
            return reader.read(runs, dtype)
        values = _read_runs(self._arrays[name], runs)
        return values if dtype is None else values.astype(dtype, copy=False)


def _gather(arrays: _Arrays, indptr: np.ndarray, majors: np.ndarray):
    """data, indices and indptr of sorted major slices, read as merged runs of positions."""
    runs, sub_indptr, index_dtype = _gather_plan(indptr, majors)
    data, indices = arrays.read_both(runs, index_dtype)
    return data, indices, sub_indptr


async def _agather(arrays: _Arrays, indptr: np.ndarray, majors: np.ndarray):
    """:func:`_gather` awaited on the caller's event loop."""
    runs, sub_indptr, index_dtype = _gather_plan(indptr, majors)
    data, indices = await arrays.aread_both(runs, index_dtype)
    return data, indices, sub_indptr


def _gather_plan(
    indptr: np.ndarray, majors: np.ndarray
) -> tuple[list[tuple[int, int]], np.ndarray, Any]:
    """The runs of positions sorted major slices read, their indptr, the index dtype."""
    starts, stops = indptr[majors].astype(np.int64), indptr[majors + 1].astype(np.int64)
    sub_indptr = np.zeros(majors.size + 1, dtype=np.int64)
    np.cumsum(stops - starts, out=sub_indptr[1:])
    # scipy keeps int32 indices when they fit: decoded straight into them, not copied after
    index_dtype = np.int32 if sub_indptr[-1] < 2**31 else np.int64
    return _runs(starts, stops), sub_indptr.astype(index_dtype), index_dtype


def _read_runs(array: Any, runs: list[tuple[int, int]]) -> np.ndarray:
    """Runs of positions through zarr or h5py, for arrays :mod:`annlayout.storage.chunks` does
    not read itself: one slice, or one orthogonal selection that zarr fetches chunk by chunk;
    h5py reads them one by one."""
    if not runs:
        return np.zeros(0, dtype=array.dtype)
    if len(runs) == 1:
        return np.asarray(array[runs[0][0] : runs[0][1]])
    if hasattr(array, "get_orthogonal_selection"):
        positions = np.concatenate([np.arange(a, b) for a, b in runs])
        return np.asarray(array.get_orthogonal_selection((positions,)))
    return np.concatenate([array[a:b] for a, b in runs])


def _runs(starts: np.ndarray, stops: np.ndarray) -> list[tuple[int, int]]:
    """Merge adjacent [start, stop) ranges (consecutive rows are one read); drop empty ones."""
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if not starts.size:
        return []
    breaks = starts[1:] != stops[:-1]
    run_starts = starts[np.concatenate([[True], breaks])]
    run_stops = stops[np.concatenate([breaks, [True]])]
    return list(zip(run_starts.tolist(), run_stops.tolist(), strict=True))


def _async_array(node: Any) -> Any:
    """zarr's ``AsyncArray`` behind an array (None for h5py)."""
    return getattr(node, "_async_array", None)


async def _on_store_loop(node: Any, coroutine: Any) -> Any:
    """``await coroutine`` of a zarr array: on the caller's loop where its store's client
    is bound to no loop (local files, obstore), else on zarr's (fsspec)."""
    from annlayout.storage.chunks import _local_root, _obstore_of, on_zarr_loop

    store = node.store_path.store
    if _local_root(store) is not None or _obstore_of(store) is not None:
        return await coroutine
    return await on_zarr_loop(coroutine)


def _dense_take(node: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(rows, return_inverse=True)
    if hasattr(node, "get_orthogonal_selection"):
        selection = (unique,) if len(node.shape) == 1 else (unique, cols)
        block = node.get_orthogonal_selection(selection)
        return block[inverse]
    block = node[unique] if unique.size else np.zeros((0, *node.shape[1:]), node.dtype)
    block = block[inverse]
    return block if block.ndim == 1 else block[:, cols]


__all__ = ["Dataset", "Frame", "Matrix", "NotAnnDataError", "StaleCopyWarning", "open"]
