"""AnnData's encodings, one registration each, and tables of behaviour keyed by encoding.

anndata's IO registry has one registration per (storage type, encoding, version). annlayout
never reads or writes through a registration of its own, so it needs less: per encoding, what
kind of element it is (a container, a composite of named parts, a sparse matrix of an
orientation, one array of text, ...) and the version anndata writes today. The storage type
changes none of that, so each encoding is registered once; :func:`lookup` answers for any
element and names it when its encoding is unknown.

Behaviour that differs by encoding in the layers above (how survey describes an element, how
apply copies it as stored, how verify digests its rows) is a :class:`Dispatch` table in the
layer that owns the behaviour, filled by decorators, never an if/elif ladder here or there.
Each table says which encodings it must cover, so a new registration that a table misses is a
test failure (``tests/test_registry.py``), not a silent fall-through.

No numpy here: the reader, the loader and the planner import it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from annlayout.base.errors import UnknownEncodingError

Orientation = Literal["csr", "csc"]


@dataclass(frozen=True)
class Encoding:
    """What annlayout knows of one encoding anndata writes."""

    name: str  # the ``encoding-type`` attribute
    version: str  # the ``encoding-version`` anndata 0.12 and 0.13 write
    older: tuple[str, ...] = ()  # earlier versions anndata still reads
    container: bool = False  # a group whose children are elements of their own
    root: bool = False  # the AnnData itself, at a store's root
    composite: bool = False  # a group of arrays one rule governs (its parts follow the element)
    parts: tuple[str, ...] = ()  # a composite's arrays; awkward arrays name theirs by their form
    orientation: Orientation | None = None  # a sparse matrix's, csr or csc
    strings: bool = False  # one array of text
    string_parts: tuple[str, ...] = ()  # parts that always hold text
    scalar: bool = False  # a 0-d value
    matrix: bool = False  # rows of values a reader selects from (X, layers, obsm)
    empty: bool = False  # no value (None): anndata writes nothing for an absent raw
    noun: str | None = None  # what a user calls it ("a CSR sparse matrix"), where it has a name
    columns: bool = False  # a container of columns, read whole with it (a dataframe)

    @property
    def sparse(self) -> bool:
        return self.orientation is not None

    @property
    def dense(self) -> bool:
        """A matrix stored as one array."""
        return self.matrix and not self.sparse

    @property
    def by_rows(self) -> bool:
        """A matrix whose rows are stored one after another (dense or CSR): new rows go at
        its end."""
        return self.dense or self.orientation == "csr"

    @property
    def holds_whole(self) -> bool:
        """What it holds is read whole with it, never streamed: a categorical's, nullable's
        or awkward array's parts, a dataframe's columns."""
        return (self.composite and not self.sparse) or self.columns

    @property
    def single(self) -> bool:
        """Stored as one array (not a group)."""
        return not (self.container or self.composite)

    @property
    def versions(self) -> tuple[str, ...]:
        return (self.version, *self.older)

    def oriented(self, element: str) -> Orientation:
        """A sparse matrix's orientation; asked of another encoding, an error naming it."""
        if self.orientation is None:
            raise UnknownEncodingError(element, self.name, "orientation")
        return self.orientation

    @property
    def transposed(self) -> Encoding:
        """The sparse encoding of the other orientation."""
        if self.orientation is None:
            raise ValueError(f"{self.name} has no orientation")
        return sparse_encoding("csc" if self.orientation == "csr" else "csr")


_REGISTERED: dict[str, Encoding] = {}


def register(encoding: Encoding) -> Encoding:
    """One registration per encoding: a second one is a programming error."""
    if encoding.name in _REGISTERED:
        raise ValueError(f"encoding {encoding.name!r} is registered twice")
    _REGISTERED[encoding.name] = encoding
    return encoding


def get(name: str | None) -> Encoding | None:
    """The registered encoding, or None: for callers that treat an unknown encoding as such
    (survey describes what it finds; apply writes it through anndata, which names it)."""
    return _REGISTERED.get(name) if name is not None else None


def lookup(name: str | None, element: str) -> Encoding:
    """The registered encoding of ``element``; an unknown one is a one-line error naming both."""
    found = get(name)
    if found is None:
        raise UnknownEncodingError(element, name)
    return found


def registered() -> Iterator[Encoding]:
    return iter(_REGISTERED.values())


def sparse_encoding(orientation: str) -> Encoding:
    """The sparse matrix encoding of an orientation (``csr`` -> ``csr_matrix``)."""
    for encoding in _REGISTERED.values():
        if encoding.orientation == orientation:
            return encoding
    raise ValueError(f"no sparse encoding has orientation {orientation!r}")


def names(which: Callable[[Encoding], bool]) -> frozenset[str]:
    """The names of the registered encodings ``which`` holds for."""
    return frozenset(e.name for e in _REGISTERED.values() if which(e))


_SPARSE_PARTS = ("data", "indices", "indptr")
_NULLABLE_PARTS = ("values", "mask")

for _encoding in (
    Encoding("anndata", "0.1.0", container=True, root=True),
    Encoding("raw", "0.1.0", container=True),
    Encoding("dict", "0.1.0", container=True),
    Encoding(
        "dataframe", "0.2.0", older=("0.1.0",), container=True, columns=True,
        noun="a dataframe",
    ),
    Encoding("array", "0.2.0", matrix=True, noun="a dense array"),
    Encoding("string-array", "0.2.0", strings=True, noun="an array of strings"),
    Encoding("rec-array", "0.2.0", noun="a record array"),
    Encoding("numeric-scalar", "0.2.0", scalar=True),
    Encoding("string", "0.2.0", strings=True, scalar=True),
    Encoding("null", "0.1.0", scalar=True, empty=True),
    Encoding(
        "csr_matrix", "0.1.0", composite=True, parts=_SPARSE_PARTS, orientation="csr",
        matrix=True, noun="a CSR sparse matrix",
    ),
    Encoding(
        "csc_matrix", "0.1.0", composite=True, parts=_SPARSE_PARTS, orientation="csc",
        matrix=True, noun="a CSC sparse matrix",
    ),
    Encoding(
        "categorical", "0.2.0", composite=True, parts=("codes", "categories"),
        noun="a categorical",
    ),
    Encoding("nullable-integer", "0.1.0", composite=True, parts=_NULLABLE_PARTS),
    Encoding("nullable-boolean", "0.1.0", composite=True, parts=_NULLABLE_PARTS),
    Encoding(
        "nullable-string-array", "0.1.0", composite=True, parts=_NULLABLE_PARTS,
        string_parts=("values",),
    ),
    Encoding("awkward-array", "0.1.0", composite=True, noun="an awkward array"),
):  # fmt: skip
    register(_encoding)


# --------------------------------------------------------------------------- dispatch

T = TypeVar("T")


class Dispatch(Generic[T]):
    """One behaviour per encoding, registered by decorators in the layer that owns it.

    ``covers`` says which registered encodings the table must hold (the test checks it);
    ``default`` answers for the others, where there is a sensible answer (a registered
    encoding without one is a one-line error naming the element).
    """

    tables: ClassVar[list[Dispatch[Any]]] = []  # every table made, for the coverage test

    def __init__(
        self, behaviour: str, covers: Callable[[Encoding], bool], default: T | None = None
    ):
        self.behaviour, self.covers, self.default = behaviour, covers, default
        self._table: dict[str, T] = {}
        Dispatch.tables.append(self)

    def register(self, *encodings: str) -> Callable[[T], T]:
        def add(behaviour: T) -> T:
            for name in encodings:
                if name not in _REGISTERED or name in self._table:
                    raise ValueError(f"{self.behaviour}: {name!r} unregistered or given twice")
                self._table[name] = behaviour
            return behaviour

        return add

    def get(self, name: str | None) -> T | None:
        """The behaviour for encoding ``name`` or the default, None where there is neither:
        for callers that meet encodings other tools write and handle them themselves."""
        return self._table.get(name, self.default) if name is not None else self.default

    def of(self, name: str | None, element: str) -> T:
        """The behaviour for ``element`` of encoding ``name``."""
        found = self._table.get(lookup(name, element).name, self.default)
        if found is None:
            raise UnknownEncodingError(element, name, self.behaviour)
        return found

    @property
    def encodings(self) -> frozenset[str]:
        return frozenset(self._table)

    def missing(self) -> frozenset[str]:
        """Registered encodings it should cover and does not (none, when complete)."""
        return names(self.covers) - self.encodings
