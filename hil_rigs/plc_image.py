"""The memory of a simulated PLC, laid out by its tag map (engineering values, no I/O).

A ``PlcImage`` holds every tag of one PLC, keyed by the tag's *role*
(``plc_bridge.roles``; the name of a tag in the shipped maps): plain tags as scalars,
the per-cell block as one NumPy array per field (``image.cells["voltage"][k]`` is cell
``k`` in floor order). The PLC logic (``hil_rigs.plc_logic``) works in roles, so the
same logic serves a foreign map (``SP_AMPS`` with ``role = "line_current_sp"``); the
protocol edges (``hil_rigs.edges``) serve each tag under the map's name and location.

What the map says about a value is served as the PLC it describes would serve it:

* Bool tags that live in a bit of a status word (``cell007.tapping`` = bit 1 of
  ``cell007.status``) are views of that word: setting the bool sets the bit and reading
  it reads the bit, exactly as in PLC memory.
* ``invert``: the image holds the meaning (``remote`` True = the PLC is in remote); the
  bit in memory, on the wire and on an OPC UA node is the PLC's own (a ``LOCAL`` bit set
  while the PLC is in local).
* ``alias_of``: an alias has no memory of its own; reading it reads its target's register
  (a PLC without a separate active setpoint serves the setpoint register). What the PLC
  logic keeps under the alias's role stays private (never served).
* A role the map does not give (no ``heartbeat_in``, no ``ramp_rate_sp``) is private PLC
  memory: the logic may read (0 until written) and write it; nobody outside sees it.
* Status bits: the logic writes status words in the shipped maps' layout; a map that
  gives a bit's role elsewhere (its own ``STATUS`` word, bit 1 ``TRIP``) gets it from
  there at every ``sync`` (the edges' ``publish``).

The image also knows which client-writable tags the PLC itself changed (``take_dirty``,
tag names), so an edge can push them to its wire representation (setpoint tracking).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from plc_bridge.codec import DataType, Table, WordOrder
from plc_bridge.tagmap import Tag, TagMap

__all__ = ["PlcImage"]


class _Scalars(dict[str, float]):
    """Plain-tag memory by role; bit views and aliases routed, unknown roles private (0.0)."""

    def __init__(self) -> None:
        super().__init__()
        #: role -> (word role, bit, invert) for a bool inside a served 16-bit word
        self.views: dict[str, tuple[str, int, bool]] = {}
        #: role of an alias -> role of its target (reads); writes stay private
        self.aliases: dict[str, str] = {}
        #: private memory: roles the map does not serve, and what the logic keeps under an alias
        self.private: dict[str, float] = {}

    def __getitem__(self, key: str) -> float:
        view = self.views.get(key)
        if view is not None:
            word, bit, inv = view
            return float(bool((int(self[word]) >> bit) & 1) != inv)
        target = self.aliases.get(key)
        if target is not None:
            return self[target]
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return self.private.get(key, 0.0)

    def __setitem__(self, key: str, value: float) -> None:
        view = self.views.get(key)
        if view is not None:
            word, bit, inv = view
            self[word] = _set_bit(int(self[word]), bit, bool(value) != inv)
        elif key in self.aliases or not dict.__contains__(self, key):
            self.private[key] = float(value)
        else:
            dict.__setitem__(self, key, float(value))


class _Cells(dict[str, np.ndarray]):
    """Per-cell memory by field role; a role the map does not give is a private array of zeros."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __missing__(self, key: str) -> np.ndarray:
        a = np.zeros(self.n)
        self[key] = a
        return a


class PlcImage:
    """Engineering-value memory of one PLC, keyed by role (see the module docstring).

    Args:
        tagmap: the PLC's tag map (fixes names, roles, types, the per-cell block size).

    Attributes:
        scalars: plain tags by role (bool views and aliases routed; other roles private).
        cells: per-cell fields by field role, float64 arrays of ``n_cells``.
        t_s: plant time of the last PLC scan that updated the image [s].
        cell_index: concrete per-cell tag name -> (field role, cell index).
    """

    def __init__(self, tagmap: TagMap) -> None:
        self.tagmap = tagmap
        self.n_cells = tagmap.cells.count if tagmap.cells is not None else 0
        self.t_s = 0.0
        self.scalars = _Scalars()
        self.cells = _Cells(self.n_cells)
        self.cell_index: dict[str, tuple[str, int]] = {}
        #: per-cell bool field role -> (word field role, bit, invert)
        self.cell_bit_of: dict[str, tuple[str, int, bool]] = {}
        #: per-cell alias field role -> target field role
        self.cell_alias_of: dict[str, str] = {}
        #: tag name -> role (plain tags) or field role (per-cell tags)
        self.key_of: dict[str, str] = {}
        self._dirty: set[str] = set()
        words: dict[tuple[int, str, int], Tag] = {}
        for t in tagmap:
            if t.has_modbus and t.bit is None and t.type is not DataType.BOOL and t.alias_of is None:
                words[(t.device_id, t.table.value, t.address)] = t
        field_tag: dict[str, Tag] = {}
        if tagmap.cells is not None:
            for f in tagmap.cells.fields:
                t0 = tagmap[tagmap.cell_tags(f)[0]]
                field_tag[f] = t0
                for i, name in enumerate(tagmap.cell_tags(f)):
                    self.cell_index[name] = (t0.role, i)
                    self.key_of[name] = t0.role
        for t in tagmap:
            if t.cell is not None:
                continue
            self.key_of[t.name] = t.role
            if t.alias_of is not None:
                self.scalars.aliases[t.role] = tagmap[t.alias_of].role
                continue
            src = words.get((t.device_id, t.table.value, t.address)) if t.bit is not None else None
            if src is not None and t.bit is not None:
                self.scalars.views[t.role] = (src.role, int(t.bit), t.invert)
            else:
                dict.__setitem__(self.scalars, t.role, 0.0)
        for t0 in field_tag.values():
            if t0.alias_of is not None:
                self.cell_alias_of[t0.role] = tagmap[tagmap.cell_tags(t0.alias_of)[0]].role
                continue
            src = words.get((t0.device_id, t0.table.value, t0.address)) if t0.bit is not None else None
            if src is not None and src.cell is not None and t0.bit is not None:
                self.cell_bit_of[t0.role] = (src.role, int(t0.bit), t0.invert)
            else:
                self.cells[t0.role] = np.zeros(self.n_cells)
        #: (word role, bit, role, per cell) of the shipped map's status bits that this map
        #: serves elsewhere while the word itself is private (``sync``)
        self._canonical = self._canonical_bits()

    def _canonical_bits(self) -> list[tuple[str, int, str, bool]]:
        """The PLC logic writes status words in the shipped maps' layout (``status_word`` bit
        1 = tripped). A foreign map without that word but with the bit's role elsewhere (a
        ``TRIP`` bit of its own ``STATUS`` word) gets the role's value from the word (``sync``)."""
        from plc_bridge.plant import POTROOM_MAP, RECTIFIER_MAP, potroom_tagmap, rectifier_tagmap

        tm = self.tagmap
        if Path(tm.source) in (Path(RECTIFIER_MAP), Path(POTROOM_MAP)):
            return []  # the shipped layout itself
        try:
            if tm.device == "rectifier":
                canon = rectifier_tagmap(tm.instance)
            elif tm.device == "potroom":
                canon = potroom_tagmap(tm.instance, max(self.n_cells, 1))
            else:
                return []
        except Exception:  # no shipped map to compare with: nothing to derive
            return []
        words = {(t.device_id, t.table.value, t.address): t for t in canon
                 if t.has_modbus and t.bit is None and t.type is not DataType.BOOL}  # fmt: skip
        out: list[tuple[str, int, str, bool]] = []
        seen: set[str] = set()
        for t in canon:
            w = words.get((t.device_id, t.table.value, t.address)) if t.bit is not None else None
            if w is None or t.bit is None or t.role in seen:
                continue
            seen.add(t.role)
            if t.cell is not None:
                mine = self.tagmap.role_field(t.role) is not None and self.tagmap.role_field(w.role) is None
                gives = t.role in self.cell_bit_of or dict.__contains__(self.cells, t.role)
                if mine and gives:
                    out.append((w.role, int(t.bit), t.role, True))
            else:
                word_private = self.tagmap.role_tag(w.role) is None
                gives = t.role in self.scalars.views or dict.__contains__(self.scalars, t.role)
                if word_private and gives:
                    out.append((w.role, int(t.bit), t.role, False))
        return out

    def sync(self) -> None:
        """Derive the roles of ``_canonical_bits`` from the private status words the logic
        wrote (call after the PLC logic's scan, before serving; the edges' ``publish`` does)."""
        for word, bit, role, per_cell in self._canonical:
            if per_cell:
                bits = ((self.cells[word].astype(np.int64) >> bit) & 1).astype(bool)
                self.set_cell_field(role, bits, by_plc=False)
            else:
                self.scalars[role] = float((int(self.scalars[word]) >> bit) & 1)

    # ------------------------------------------------------------------ access by tag name or role

    def tag(self, name: str) -> Tag:
        """The tag named ``name``, else the tag giving role ``name``, else a private float64 slot."""
        tm = self.tagmap
        if name in tm:
            return tm[name]
        t = tm.role_tag(name)
        if t is not None:
            return t
        f = tm.role_field(name)
        if f is not None:
            return tm[tm.cell_tags(f)[0]]
        return _private_tag(name)

    def _key(self, name: str) -> str:
        return self.key_of.get(name, name)

    def get(self, name: str) -> float | int | bool:
        """Engineering value of tag (or role) ``name``, typed as the tag (bool, int for unscaled ints, float)."""
        tag = self.tag(name)
        hit = self.cell_index.get(name)
        if hit is not None:
            f, i = hit
            f = self.cell_alias_of.get(f, f)
            if f in self.cell_bit_of:
                wf, bit, inv = self.cell_bit_of[f]
                return bool((int(self.cells[wf][i]) >> bit) & 1) != inv
            v = float(self.cells[f][i])
        else:
            v = float(self.scalars[self._key(name)])
        return _typed(tag, v)

    def set(self, name: str, value: float | int | bool, *, by_plc: bool = True) -> None:
        """Set tag (or role) ``name``. ``by_plc`` marks client-writable tags the PLC changed (``take_dirty``)."""
        tag = self.tag(name)
        hit = self.cell_index.get(name)
        if hit is not None:
            f, i = hit
            if f in self.cell_bit_of:
                wf, bit, inv = self.cell_bit_of[f]
                self.cells[wf][i] = _set_bit(int(self.cells[wf][i]), bit, bool(value) != inv)
            else:
                self.cells[f][i] = float(value)
        else:
            self.scalars[self._key(name)] = float(value)
        if by_plc and tag.writable and tag.name in self.tagmap:
            self._dirty.add(tag.name)

    def cell_field(self, field: str) -> np.ndarray:
        """Per-cell values of field role ``field`` (a bit field is derived from its status word)."""
        field = self.cell_alias_of.get(field, field)
        if field in self.cell_bit_of:
            wf, bit, inv = self.cell_bit_of[field]
            bits = ((self.cells[wf].astype(np.int64) >> bit) & 1).astype(bool)
            return ~bits if inv else bits
        return self.cells[field]

    def set_cell_field(self, field: str, values: np.ndarray, *, by_plc: bool = True) -> None:
        """Set per-cell field role ``field`` for all cells (a bit field sets its bit in the status word)."""
        if field in self.cell_bit_of:
            wf, bit, inv = self.cell_bit_of[field]
            w = self.cells[wf].astype(np.int64)
            v = np.asarray(values, dtype=bool) != inv
            w = np.where(v, w | (1 << bit), w & ~(1 << bit))
            self.cells[wf][:] = w
        else:
            self.cells[field][:] = values
        f = self.tagmap.role_field(field)
        if by_plc and f is not None:
            t0 = self.tagmap[self.tagmap.cell_tags(f)[0]]
            if t0.writable:
                self._dirty.update(self.tagmap.cell_tags(f))

    def take_dirty(self) -> list[str]:
        """Client-writable tags (names) the PLC changed since the last call (for the edges to push)."""
        d, self._dirty = sorted(self._dirty), set()
        return d

    def reset(self) -> None:
        """Power-cycle: every register back to zero (a PLC restart without retained memory)."""
        for k in list(dict.keys(self.scalars)):
            dict.__setitem__(self.scalars, k, 0.0)
        self.scalars.private.clear()
        for a in self.cells.values():
            a[:] = 0.0
        self._dirty.update(t.name for t in self.tagmap.writable())

    def names(self) -> Iterable[str]:
        return self.tagmap.names


def _private_tag(role: str) -> Tag:
    """A tag for PLC memory the map does not serve (float64, no bounds, no location)."""
    return Tag(name=role, type=DataType.FLOAT64, word_order=WordOrder.ABCD, unit="", access="read", scale=1.0,
               offset=0.0, min=None, max=None, description="private PLC memory (not in the tag map)",
               table=Table.HOLDING, address=-1, device_id=0, role=role)  # fmt: skip


def _set_bit(word: int, bit: int, value: bool) -> float:
    return float((word | (1 << bit)) if value else (word & ~(1 << bit) & 0xFFFF))


def _typed(tag: Tag, v: float) -> Any:
    if tag.type is DataType.BOOL:
        return bool(v)
    if tag.type.is_int and tag.scale == 1.0 and tag.offset == 0.0 and math.isfinite(v):
        return int(v)
    return v
