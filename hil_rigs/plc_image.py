"""The memory of a simulated PLC, laid out by its tag map (engineering values, no I/O).

A ``PlcImage`` holds every tag of one PLC: plain tags as scalars, the per-cell block
as one NumPy array per field (``image.cells["voltage"][k]`` is cell ``k`` in floor
order). Bool tags that live in a bit of a status word (``cell007.tapping`` = bit 1 of
``cell007.status``) are views of that word: setting the bool sets the bit and reading
it reads the bit, exactly as in PLC memory.

The PLC logic (``hil_rigs.plc_logic``) reads commands from and writes measurements to
the image; the protocol edges (``hil_rigs.edges``: Modbus TCP, OPC UA) serve it. The
image also knows which client-writable tags the PLC itself changed (``take_dirty``),
so an edge can push them to its wire representation (e.g. setpoint tracking).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from plc_bridge.codec import DataType
from plc_bridge.tagmap import Tag, TagMap

__all__ = ["PlcImage"]


class PlcImage:
    """Engineering-value memory of one PLC.

    Args:
        tagmap: the PLC's tag map (fixes names, types, the per-cell block size).

    Attributes:
        scalars: plain (non-cell, non-derived-bit) tags by name.
        cells: per-cell fields by field name, float64 arrays of ``n_cells``.
        t_s: plant time of the last PLC scan that updated the image [s].
    """

    def __init__(self, tagmap: TagMap) -> None:
        self.tagmap = tagmap
        self.n_cells = tagmap.cells.count if tagmap.cells is not None else 0
        self.t_s = 0.0
        self.scalars: dict[str, float] = {}
        self.cells: dict[str, np.ndarray] = {}
        #: concrete per-cell tag name -> (field, index)
        self.cell_index: dict[str, tuple[str, int]] = {}
        #: plain bool tag -> (word tag, bit) when a 16-bit word shares its register
        self.bit_of: dict[str, tuple[str, int]] = {}
        #: per-cell bool field -> (word field, bit)
        self.cell_bit_of: dict[str, tuple[str, int]] = {}
        self._dirty: set[str] = set()
        words: dict[tuple[int, str, int], Tag] = {}
        for t in tagmap:
            if t.has_modbus and t.bit is None and t.type is not DataType.BOOL:
                words[(t.device_id, t.table.value, t.address)] = t
        fields: dict[str, Tag] = {}
        if tagmap.cells is not None:
            for f in tagmap.cells.fields:
                fields[f] = tagmap[tagmap.cell_tags(f)[0]]
                for i, name in enumerate(tagmap.cell_tags(f)):
                    self.cell_index[name] = (f, i)
        for t in tagmap:
            if t.cell is not None:
                continue
            src = words.get((t.device_id, t.table.value, t.address)) if t.bit is not None else None
            if src is not None and t.bit is not None:
                self.bit_of[t.name] = (src.name, int(t.bit))
            else:
                self.scalars[t.name] = 0.0
        for f, t0 in fields.items():
            src = words.get((t0.device_id, t0.table.value, t0.address)) if t0.bit is not None else None
            if src is not None and src.cell is not None and src.field is not None and t0.bit is not None:
                self.cell_bit_of[f] = (src.field, int(t0.bit))
            else:
                self.cells[f] = np.zeros(self.n_cells)

    # ------------------------------------------------------------------ access by tag name

    def tag(self, name: str) -> Tag:
        return self.tagmap[name]

    def get(self, name: str) -> float | int | bool:
        """Engineering value of tag ``name``, typed as the tag (bool, int for unscaled ints, float)."""
        tag = self.tagmap[name]
        if name in self.cell_index:
            f, i = self.cell_index[name]
            if f in self.cell_bit_of:
                wf, bit = self.cell_bit_of[f]
                return bool((int(self.cells[wf][i]) >> bit) & 1)
            v = float(self.cells[f][i])
        elif name in self.bit_of:
            w, bit = self.bit_of[name]
            return bool((int(self.scalars[w]) >> bit) & 1)
        else:
            v = float(self.scalars[name])
        return _typed(tag, v)

    def set(self, name: str, value: float | int | bool, *, by_plc: bool = True) -> None:
        """Set tag ``name``. ``by_plc`` marks client-writable tags the PLC changed (``take_dirty``)."""
        tag = self.tagmap[name]
        if name in self.cell_index:
            f, i = self.cell_index[name]
            if f in self.cell_bit_of:
                wf, bit = self.cell_bit_of[f]
                self.cells[wf][i] = _set_bit(int(self.cells[wf][i]), bit, bool(value))
            else:
                self.cells[f][i] = float(value)
        elif name in self.bit_of:
            w, bit = self.bit_of[name]
            self.scalars[w] = _set_bit(int(self.scalars[w]), bit, bool(value))
        else:
            self.scalars[name] = float(value)
        if by_plc and tag.writable:
            self._dirty.add(name)

    def cell_field(self, field: str) -> np.ndarray:
        """Per-cell values of ``field`` (a bit field is derived from its status word)."""
        if field in self.cell_bit_of:
            wf, bit = self.cell_bit_of[field]
            return ((self.cells[wf].astype(np.int64) >> bit) & 1).astype(bool)
        return self.cells[field]

    def set_cell_field(self, field: str, values: np.ndarray, *, by_plc: bool = True) -> None:
        """Set per-cell ``field`` for all cells (a bit field sets its bit in the status word)."""
        if field in self.cell_bit_of:
            wf, bit = self.cell_bit_of[field]
            w = self.cells[wf].astype(np.int64)
            v = np.asarray(values, dtype=bool)
            w = np.where(v, w | (1 << bit), w & ~(1 << bit))
            self.cells[wf][:] = w
        else:
            self.cells[field][:] = values
        if by_plc and self.tagmap.cells is not None:
            t0 = self.tagmap[self.tagmap.cell_tags(field)[0]]
            if t0.writable:
                self._dirty.update(self.tagmap.cell_tags(field))

    def take_dirty(self) -> list[str]:
        """Client-writable tags the PLC changed since the last call (for the edges to push)."""
        d, self._dirty = sorted(self._dirty), set()
        return d

    def reset(self) -> None:
        """Power-cycle: every register back to zero (a PLC restart without retained memory)."""
        for k in self.scalars:
            self.scalars[k] = 0.0
        for a in self.cells.values():
            a[:] = 0.0
        self._dirty.update(t.name for t in self.tagmap.writable())

    def names(self) -> Iterable[str]:
        return self.tagmap.names


def _set_bit(word: int, bit: int, value: bool) -> float:
    return float((word | (1 << bit)) if value else (word & ~(1 << bit) & 0xFFFF))


def _typed(tag: Tag, v: float) -> float | int | bool:
    if tag.type is DataType.BOOL:
        return bool(v)
    if tag.type.is_int and tag.scale == 1.0 and tag.offset == 0.0 and math.isfinite(v):
        return int(v)
    return v
