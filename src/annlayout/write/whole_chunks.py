"""The one writer of whole chunks: every array annlayout fills piece by piece goes through it.

zarr-python loses data silently when two writers change parts of one shard at once
(zarr-python #3682), and a chunk written twice is one a killed run may have spoiled after its
checkpoint. So values are written along the first axis in whole units only (a shard, or a
chunk where unsharded): apply's transposes, append's growing arrays, concat's combined
matrices (serial: appended; on dask: each gather task's bucket) and the chunks buckets share
(put together by the driver from the tasks' pieces) all use :class:`WholeChunkWriter`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from annlayout.base.errors import IntegrityError


def whole_span(unit: int, size: int, start: int, stop: int) -> tuple[int, int]:
    """The units that values ``start:stop`` of an array of ``size`` cover whole (empty where
    ``lo >= hi``): ``lo`` is the first unit boundary at or after ``start``; a last unit that
    ends at the array's end is whole however short it is."""
    lo = -(-start // unit) * unit
    hi = stop if stop == size else stop // unit * unit
    return lo, hi


class WholeChunkWriter:
    """Writes consecutive values along ``array``'s first axis, from ``position`` on, in whole
    units of ``unit`` elements, converted to ``dtype``.

    Values arrive in ranges that need not align with units; what does not fill a unit yet
    (the tail) is held, owned and converted (a view would keep the caller's range alive),
    until more values complete it, so no unit is ever written twice. ``close`` writes the
    last, partial unit, or with ``keep_partial`` returns it unwritten as a piece, with the
    values before the first unit boundary when ``position`` is not on one: (position,
    values) pairs for whoever writes those units whole (concat's driver, with
    :func:`write_pieces`).

    ``grow``: the array is cut back to ``position`` and lengthened as values arrive (an
    append, whose final length is known only at the end). ``tail``: values held by an earlier
    run to start with (a resumed append). ``span``: elements converted and written at once,
    a multiple of ``unit`` (default one unit): besides the caller's ranges the writer holds
    one span, what the codecs make of it and the tail, which the memory model counts
    (:func:`annlayout.planning.memory.write_span`), not the whole range a caller produces.
    """

    def __init__(
        self,
        array: Any,
        unit: int,
        dtype: Any,
        *,
        position: int = 0,
        grow: bool = False,
        span: int | None = None,
        tail: np.ndarray | None = None,
        keep_partial: bool = False,
    ):
        self.array, self.unit, self.dtype = array, max(1, int(unit)), np.dtype(dtype)
        self.span = max(1, (span or self.unit) // self.unit) * self.unit
        self.position, self.grow, self.keep_partial = int(position), grow, keep_partial
        if self.position % self.unit and not keep_partial:
            raise ValueError(f"position {position} is not on a unit boundary ({self.unit})")
        if grow and array.shape[0] != self.position:
            array.resize((self.position, *array.shape[1:]))
        self.pending: list[np.ndarray] = []
        self.pending_size = 0
        self.pieces: list[tuple[int, np.ndarray]] = []
        if tail is not None and tail.shape[0]:
            self.write(tail)

    @property
    def end(self) -> int:
        """Where the next value goes."""
        return self.position + self.pending_size

    @property
    def tail(self) -> np.ndarray:
        """The values held, not written yet (converted): what a checkpoint saves."""
        if not self.pending:
            return np.empty((0, *self.array.shape[1:]), dtype=self.dtype)
        return self.pending[0]

    def write(self, values: np.ndarray) -> None:
        if not values.shape[0]:
            return
        self.pending.append(values)
        self.pending_size += values.shape[0]
        head = -self.position % self.unit
        if head and self.pending_size >= head:  # values before the first boundary: a piece
            self.pieces.append((self.position, self._take(head)))
            self.position += head
        lo, hi = whole_span(self.unit, self._size(), self.position, self.end)
        if hi > lo and not -self.position % self.unit:
            self._flush(hi - lo)
        self._own()

    def close(self) -> list[tuple[int, np.ndarray]]:
        """The last values written (or kept, with ``keep_partial``); the pieces not written."""
        if self.pending_size:
            if self.keep_partial:
                self.pieces.append((self.position, self._take(self.pending_size)))
            else:
                self._flush(self.pending_size)
        pieces, self.pieces = self.pieces, []
        return pieces

    def _size(self) -> int:
        """The array's length as far as whole units go: a growing array has no end yet."""
        return -1 if self.grow else int(self.array.shape[0])

    def _own(self) -> None:
        """The tail as one owned, converted array."""
        if self.pending and (len(self.pending) > 1 or self.pending[0].dtype != self.dtype
                             or self.pending[0].base is not None):  # fmt: skip
            self.pending = [self._take(self.pending_size, owned=True)]
            self.pending_size = self.pending[0].shape[0]

    def _take(self, size: int, owned: bool = True) -> np.ndarray:
        """The next ``size`` pending elements, converted: a view of the first pending range
        where it holds them in the right dtype and ``owned`` is not asked, else one new
        array (never more than ``size`` elements are copied at once)."""
        first = self.pending[0]
        if not owned and first.shape[0] >= size and first.dtype == self.dtype:
            self.pending[0] = first[size:]
            if not self.pending[0].shape[0]:
                self.pending.pop(0)
            self.pending_size -= size
            return first[:size]
        out = np.empty((size, *first.shape[1:]), dtype=self.dtype)
        filled = 0
        while filled < size:
            piece = self.pending[0]
            n = min(size - filled, piece.shape[0])
            out[filled : filled + n] = piece[:n]
            filled += n
            if n == piece.shape[0]:
                self.pending.pop(0)
            else:
                self.pending[0] = piece[n:]
        self.pending_size -= size
        return out

    def _flush(self, size: int) -> None:
        stop = self.position + size
        if self.grow and stop > self.array.shape[0]:
            self.array.resize((stop, *self.array.shape[1:]))
        while self.position < stop:
            n = min(self.span, stop - self.position)
            self.array[self.position : self.position + n] = self._take(n, owned=False)
            self.position += n


def write_pieces(array: Any, pieces: Any, name: str) -> None:
    """Units put together from ``pieces`` ((position, values) in position order, each within
    one unit: what :meth:`WholeChunkWriter.close` kept) and written whole, one at a time, by
    a :class:`WholeChunkWriter` each. ``name``: the array's, for errors."""
    chunk = int(array.chunks[0])
    writer: WholeChunkWriter | None = None
    current = -1
    for position, values in pieces:
        number = position // chunk
        if (position + values.shape[0] - 1) // chunk != number:
            raise IntegrityError(f"{name}: a piece at {position} crosses a chunk boundary")
        if writer is None or number != current:
            if writer is not None and writer.pending_size:
                raise IntegrityError(f"{name}: chunk {current} is incomplete")
            current = number
            writer = WholeChunkWriter(array, chunk, array.dtype, position=number * chunk)
        if position != writer.end:
            raise IntegrityError(f"{name}: values {writer.end} to {position} are missing")
        writer.write(values)
    if writer is not None and writer.pending_size:
        raise IntegrityError(f"{name}: chunk {current} is incomplete")
