"""Tag maps: one TOML per device type, validated, expanded to concrete tags.

A tag map says, for every value a PLC exposes or accepts: its name, data type,
unit, access, scaling (``engineering = raw * scale + offset``), engineering
bounds, its Modbus location (table, address, device id, word order) and/or its
OPC UA node (browse path and/or NodeId). Client, server, exporter and safety
layer all read the same ``TagMap``; a plant with another register layout changes
the TOML, not the code.

File layout::

    [device]
    name = "rectifier"            # device type
    instance = "Rectifier1"       # fills {instance} in browse paths (overridable at load)
    device_id = 1                 # default Modbus unit id
    word_order = "big"            # default for 32/64-bit tags

    [[tags]]
    name = "line_current_sp"
    type = "float32"              # bool|int16|uint16|int32|uint32|float32|float64
    unit = "kA"
    access = "read-write"         # read | read-write
    min = 0.0
    max = 200.0
    modbus = { table = "holding", address = 0 }
    opcua = { browse_path = "Objects/{instance}/LineCurrentSetpoint" }

    [cells]                       # optional repeated per-cell block
    count = 132
    first = 1                     # floor number of the first cell
    stride = 8                    # registers between consecutive cells (same in every table)
    base_address = 1000           # address of cell `first`, offset 0
    name = "cell{cell:03d}"       # prefix; tag "voltage" of cell 7 -> "cell007.voltage"

    [[cells.tags]]
    name = "voltage"
    type = "float32"
    modbus = { table = "input", offset = 0 }
    opcua = { browse_path = "Objects/{instance}/Cell{cell:03d}/Voltage" }

Errors name the file, the key or tag and what was expected (``TagMapError``, the
config core's ``ConfigError``); all problems of a file are reported at once.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from plc_bridge.codec import RAW_RANGE, REGISTER_COUNT, DataType, Table, WordOrder
from twin.configcore import ConfigError, ConfigIssue, StrictModel, load_toml, validate_config

__all__ = [
    "EXPORT_COLUMNS",
    "CellBlock",
    "Tag",
    "TagMap",
    "TagMapError",
    "load_tagmap",
    "parse_tagmap",
]

Access = Literal["read", "read-write"]


#: a tag map is invalid (the config core's error: ``issues``; ``problems`` as lines naming file and tag)
TagMapError = ConfigError


# ---------------------------------------------------------------- TOML schema (pydantic)

_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ModbusSpec(StrictModel):
    """Modbus location of a plain tag."""

    table: Table = Table.HOLDING
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    device_id: int | None = Field(default=None, ge=0, le=255)
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of a register (bool tags)")


class CellModbusSpec(StrictModel):
    """Modbus location of a per-cell tag: offset inside the cell's stride."""

    table: Table = Table.HOLDING
    offset: int = Field(ge=0, description="registers (or bits) from the cell's base address")
    bit: int | None = Field(default=None, ge=0, le=15)


class OpcUaSpec(StrictModel):
    """OPC UA node: browse path (``Objects/Rectifier1/LineCurrent``) and/or NodeId string."""

    browse_path: str | None = None
    node_id: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> OpcUaSpec:
        if not self.browse_path and not self.node_id:
            raise ValueError("opcua needs browse_path and/or node_id")
        return self


class _TagBase(StrictModel):
    name: str = Field(pattern=_NAME_PATTERN)
    type: DataType
    word_order: WordOrder | None = None
    unit: str = ""
    access: Access = "read"
    scale: float = 1.0
    offset: float = 0.0
    min: float | None = None
    max: float | None = None
    wraps: bool = False
    description: str = ""
    opcua: OpcUaSpec | None = None

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: float) -> float:
        if v == 0:
            raise ValueError("expected a non-zero number")
        return v


class TagSpec(_TagBase):
    modbus: ModbusSpec | None = None


class CellTagSpec(_TagBase):
    modbus: CellModbusSpec | None = None


class CellsSpec(StrictModel):
    count: int = Field(ge=1, le=10000)
    first: int = Field(default=1, ge=0)
    stride: int = Field(ge=1)
    base_address: int = Field(ge=0, le=65535)
    device_id: int | None = Field(default=None, ge=0, le=255)
    name: str = "cell{cell:03d}"
    tags: list[CellTagSpec] = Field(min_length=1)


class DeviceSpec(StrictModel):
    name: str = Field(pattern=_NAME_PATTERN)
    instance: str = ""
    description: str = ""
    device_id: int = Field(default=1, ge=0, le=255)
    word_order: WordOrder = WordOrder.BIG


class TagMapFile(StrictModel):
    device: DeviceSpec
    tags: list[TagSpec] = Field(default_factory=list)
    cells: CellsSpec | None = None


# ---------------------------------------------------------------- concrete tags


@dataclass(frozen=True, slots=True)
class Tag:
    """One concrete tag (per-cell templates already expanded).

    Engineering value = raw * ``scale`` + ``offset``, in ``unit``; bounds
    ``min``/``max`` are engineering values (None = the raw type's range).
    ``table``/``address``/``device_id`` locate it on Modbus (``address`` is -1 for a
    tag with no Modbus location); ``bit`` is set for a bool inside a register.
    ``cell``/``field`` are set for tags expanded from the ``[cells]`` block.
    """

    name: str
    type: DataType
    word_order: WordOrder
    unit: str
    access: str
    scale: float
    offset: float
    min: float | None
    max: float | None
    description: str
    table: Table
    address: int
    device_id: int
    bit: int | None = None
    browse_path: str | None = None
    node_id: str | None = None
    cell: int | None = None
    field: str | None = None
    wraps: bool = False

    @property
    def writable(self) -> bool:
        return self.access == "read-write"

    @property
    def has_modbus(self) -> bool:
        return self.address >= 0

    @property
    def n_registers(self) -> int:
        """Registers occupied (1 for bits, also bits of a register)."""
        return 1 if self.type is DataType.BOOL else REGISTER_COUNT[self.type]

    @property
    def lo(self) -> float:
        """Lower engineering bound (``min`` or the raw type's limit)."""
        if self.min is not None:
            return self.min
        return _raw_limit_eng(self)[0]

    @property
    def hi(self) -> float:
        """Upper engineering bound (``max`` or the raw type's limit)."""
        if self.max is not None:
            return self.max
        return _raw_limit_eng(self)[1]

    @property
    def modbus_ref(self) -> str:
        """Six-digit Modicon reference (e.g. 400001 = holding address 0), for integrators."""
        if not self.has_modbus:
            return ""
        prefix = {Table.COIL: 0, Table.DISCRETE: 1, Table.INPUT: 3, Table.HOLDING: 4}[self.table]
        ref = f"{prefix}{self.address + 1:05d}"
        return ref + (f".{self.bit}" if self.bit is not None else "")


def _raw_limit_eng(tag: Tag) -> tuple[float, float]:
    if tag.type is DataType.BOOL:
        return 0.0, 1.0
    if tag.type is DataType.FLOAT32:
        f = float(np.finfo(np.float32).max)
        a, b = -f, f
    elif tag.type is DataType.FLOAT64:
        f = float(np.finfo(np.float64).max)
        return -f, f
    else:
        a, b = RAW_RANGE[tag.type]
    ea, eb = a * tag.scale + tag.offset, b * tag.scale + tag.offset
    return (min(ea, eb), max(ea, eb))


@dataclass(frozen=True, slots=True)
class CellBlock:
    """The per-cell block after expansion.

    ``fields`` are the template tag names; ``tag_names[field]`` lists the concrete
    tag names in cell order (cell numbers ``numbers``).
    """

    count: int
    first: int
    stride: int
    base_address: int
    name_template: str
    fields: tuple[str, ...]
    tag_names: dict[str, tuple[str, ...]]

    @property
    def numbers(self) -> np.ndarray:
        """Floor numbers of the cells, in order."""
        return np.arange(self.first, self.first + self.count)


@dataclass(frozen=True)
class TagMap:
    """A validated, expanded tag map.

    Attributes:
        source: where it came from (file path or a label).
        device: device type name (``[device] name``).
        instance: instance name used in browse paths.
        description: free text.
        tags: concrete tags by name, in file order (plain tags, then cells in order).
        cells: the per-cell block, if any.
    """

    source: str
    device: str
    instance: str
    description: str
    tags: dict[str, Tag]
    cells: CellBlock | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index.update({n: i for i, n in enumerate(self.tags)})

    def __getitem__(self, name: str) -> Tag:
        try:
            return self.tags[name]
        except KeyError:
            raise KeyError(f"{self.source}: no tag named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.tags

    def __len__(self) -> int:
        return len(self.tags)

    def __iter__(self) -> Iterator[Tag]:
        return iter(self.tags.values())

    def index(self, name: str) -> int:
        """Position of ``name`` in ``tags`` (stable for arrays indexed by tag)."""
        return self._index[name]

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tags)

    def writable(self) -> list[Tag]:
        """Tags a client may write."""
        return [t for t in self.tags.values() if t.writable]

    def cell_tags(self, field_name: str) -> tuple[str, ...]:
        """Concrete names of per-cell tag ``field_name`` in cell order."""
        if self.cells is None or field_name not in self.cells.tag_names:
            raise KeyError(f"{self.source}: no per-cell tag {field_name!r}")
        return self.cells.tag_names[field_name]

    def modbus_tags(self) -> list[Tag]:
        return [t for t in self.tags.values() if t.has_modbus]

    # -------------------------------------------------------------- export

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per tag (columns ``EXPORT_COLUMNS``), for CSV/JSON export."""
        out = []
        for t in self.tags.values():
            out.append(
                {
                    "name": t.name,
                    "type": t.type.value,
                    "word_order": t.word_order.value if t.n_registers > 1 else "",
                    "registers": t.n_registers if t.has_modbus else "",
                    "unit": t.unit,
                    "access": t.access,
                    "scale": t.scale,
                    "offset": t.offset,
                    "min": t.min if t.min is not None else "",
                    "max": t.max if t.max is not None else "",
                    "table": t.table.value if t.has_modbus else "",
                    "address": t.address if t.has_modbus else "",
                    "bit": t.bit if t.bit is not None else "",
                    "device_id": t.device_id if t.has_modbus else "",
                    "modbus_ref": t.modbus_ref,
                    "opcua_browse_path": t.browse_path or "",
                    "opcua_node_id": t.node_id or "",
                    "cell": t.cell if t.cell is not None else "",
                    "description": t.description,
                }
            )
        return out

    def export_csv(self, path: str | Path) -> Path:
        """Write the map as CSV (one row per tag); returns the path."""
        p = Path(path)
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(EXPORT_COLUMNS))
            w.writeheader()
            w.writerows(self.rows())
        return p

    def export_json(self, path: str | Path) -> Path:
        """Write the map as JSON ``{"device", "instance", "source", "tags": [...]}``; returns the path."""
        p = Path(path)
        doc = {
            "device": self.device,
            "instance": self.instance,
            "description": self.description,
            "source": self.source,
            "address_base": 0,
            "engineering": "raw * scale + offset",
            "tags": [{k: v for k, v in r.items() if v != ""} for r in self.rows()],
        }
        p.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return p


EXPORT_COLUMNS = (
    "name", "type", "word_order", "registers", "unit", "access", "scale", "offset", "min", "max",
    "table", "address", "bit", "device_id", "modbus_ref", "opcua_browse_path", "opcua_node_id",
    "cell", "description",
)  # fmt: skip


# ---------------------------------------------------------------- loading


def load_tagmap(path: str | Path, *, instance: str | None = None) -> TagMap:
    """Load, validate and expand a tag map TOML file.

    Args:
        path: the TOML file.
        instance: instance name for ``{instance}`` in browse paths (default: the
            file's ``[device] instance``, else the device name).

    Raises:
        TagMapError: unreadable/invalid file; every message names the file and tag.
    """
    return parse_tagmap(load_toml(path), source=str(path), instance=instance)


def parse_tagmap(data: dict[str, Any], *, source: str = "<tagmap>", instance: str | None = None) -> TagMap:
    """Validate and expand an already-parsed tag map (see ``load_tagmap``)."""
    spec = validate_config(TagMapFile, data, source)
    inst = instance or spec.device.instance or spec.device.name
    problems = _Issues(source)
    tags: list[Tag] = []
    for ts in spec.tags:
        tags.append(_concrete(ts, spec.device, inst, problems))
    cells = None
    if spec.cells is not None:
        cells = _expand_cells(spec.cells, spec.device, inst, tags, problems)
    _check(tags, problems)
    if problems:
        raise TagMapError(problems)
    return TagMap(
        source=source,
        device=spec.device.name,
        instance=inst,
        description=spec.device.description,
        tags={t.name: t for t in tags},
        cells=cells,
    )


class _Issues(list[ConfigIssue]):
    """The problems found in one tag map after validation (each names the tag or block)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def add(self, where: str, message: str) -> None:
        self.append(ConfigIssue(self.source, where, message))


def _fmt(template: str | None, where: str, problems: _Issues, **kw: Any) -> str | None:
    if template is None:
        return None
    try:
        return template.format(**kw)
    except (KeyError, IndexError, ValueError) as exc:
        problems.add(where, f"bad placeholder in {template!r} ({exc}); allowed: {{instance}}, {{cell}}")
        return template


def _concrete(
    ts: TagSpec | CellTagSpec,
    dev: DeviceSpec,
    inst: str,
    problems: _Issues,
    *,
    name: str | None = None,
    table: Table | None = None,
    address: int = -1,
    device_id: int | None = None,
    cell: int | None = None,
) -> Tag:
    where = f"tag {name or ts.name!r}"
    mb = ts.modbus
    if isinstance(mb, ModbusSpec):
        table, address, device_id = mb.table, mb.address, mb.device_id
    fmt_kw: dict[str, Any] = {"instance": inst}
    if cell is not None:
        fmt_kw["cell"] = cell
    bp = _fmt(ts.opcua.browse_path if ts.opcua else None, where, problems, **fmt_kw)
    nid = _fmt(ts.opcua.node_id if ts.opcua else None, where, problems, **fmt_kw)
    return Tag(
        name=name or ts.name,
        type=ts.type,
        word_order=ts.word_order or dev.word_order,
        unit=ts.unit,
        access=ts.access,
        scale=ts.scale,
        offset=ts.offset,
        min=ts.min,
        max=ts.max,
        description=ts.description,
        table=table or Table.HOLDING,
        address=address,
        device_id=device_id if device_id is not None else dev.device_id,
        bit=mb.bit if mb is not None else None,
        browse_path=bp,
        node_id=nid,
        cell=cell,
        field=ts.name if cell is not None else None,
        wraps=ts.wraps,
    )


def _expand_cells(cs: CellsSpec, dev: DeviceSpec, inst: str, tags: list[Tag], problems: _Issues) -> CellBlock:
    per_field: dict[str, list[str]] = {t.name: [] for t in cs.tags}
    seen: set[str] = set()
    for ct in cs.tags:
        where = f"cell tag {ct.name!r}"
        if ct.name in seen:
            problems.add(where, "duplicate name in [cells]; expected unique names")
        seen.add(ct.name)
        if ct.modbus is not None:
            n = 1 if ct.type is DataType.BOOL else REGISTER_COUNT[ct.type]
            if ct.modbus.offset + n > cs.stride:
                problems.add(
                    where,
                    f"offset {ct.modbus.offset} + {n} register(s) exceeds stride {cs.stride};"
                    f" expected offset <= {cs.stride - n}",
                )
    last_base = cs.base_address + (cs.count - 1) * cs.stride
    if last_base + cs.stride - 1 > 65535:
        problems.add(
            "cells",
            f"last cell ends at address {last_base + cs.stride - 1} > 65535;"
            f" expected base_address + count*stride <= 65536",
        )
    try:
        cs.name.format(cell=cs.first)
    except (KeyError, IndexError, ValueError) as exc:
        problems.add("cells.name", f"template {cs.name!r} is invalid ({exc}); expected e.g. 'cell{{cell:03d}}'")
        return CellBlock(cs.count, cs.first, cs.stride, cs.base_address, cs.name, tuple(per_field), {})
    n_problems = len(problems)
    for k in range(cs.count):
        number = cs.first + k
        prefix = cs.name.format(cell=number)
        base = cs.base_address + k * cs.stride
        for ct in cs.tags:
            name = f"{prefix}.{ct.name}"
            if ct.modbus is not None:
                addr = base + ct.modbus.offset
                tag = _concrete(
                    ct, dev, inst, problems, name=name, table=ct.modbus.table, address=addr,
                    device_id=cs.device_id, cell=number,
                )  # fmt: skip
            else:
                tag = _concrete(ct, dev, inst, problems, name=name, device_id=cs.device_id, cell=number)
            tags.append(tag)
            per_field[ct.name].append(name)
        if k == 0 and len(problems) > n_problems:
            # placeholder errors repeat for every cell: report the first cell only
            break
    return CellBlock(
        count=cs.count,
        first=cs.first,
        stride=cs.stride,
        base_address=cs.base_address,
        name_template=cs.name,
        fields=tuple(per_field),
        tag_names={f: tuple(v) for f, v in per_field.items()},
    )


def _check(tags: list[Tag], problems: _Issues) -> None:
    """Semantic checks on concrete tags: names, bounds, addresses, overlaps, bits."""
    names: dict[str, int] = {}
    for t in tags:
        where = f"tag {t.name!r}"
        if t.name in names:
            problems.add(where, "duplicate tag name; expected every name once")
        names[t.name] = names.get(t.name, 0) + 1
        if t.min is not None and t.max is not None and t.min > t.max:
            problems.add(where, f"bounds min {t.min:g} > max {t.max:g}; expected min <= max")
        if t.writable and t.type is not DataType.BOOL and (t.min is None or t.max is None):
            problems.add(where, "read-write tag needs engineering bounds; expected min and max")
        if t.type is DataType.BOOL and (t.scale != 1.0 or t.offset != 0.0):
            problems.add(where, "bool tags take no scale/offset; expected scale = 1, offset = 0")
        if t.wraps and not t.type.is_int:
            problems.add(where, f"wraps = true needs an integer type; got {t.type.value}")
        if t.min is not None or t.max is not None:
            lo, hi = _raw_limit_eng(t)
            if (t.min is not None and t.min < lo - 1e-9 * abs(lo)) or (
                t.max is not None and t.max > hi + 1e-9 * abs(hi)
            ):
                problems.add(
                    where,
                    f"bounds [{t.min}, {t.max}] exceed what {t.type.value}"
                    f" (scale {t.scale:g}, offset {t.offset:g}) can hold; expected within [{lo:g}, {hi:g}]",
                )
        if not t.has_modbus:
            continue
        end = t.address + t.n_registers - 1
        if end > 65535:
            problems.add(
                where,
                f"{t.type.value} at address {t.address} needs {t.n_registers} registers and"
                f" ends at {end}; expected address <= {65536 - t.n_registers}",
            )
        if t.table.is_bits:
            if t.type is not DataType.BOOL:
                problems.add(where, f"{t.table.value} table holds bits; expected type 'bool', got {t.type.value!r}")
            if t.bit is not None:
                problems.add(where, "'bit' is only for bools in holding/input registers")
        else:
            if t.type is DataType.BOOL and t.bit is None:
                problems.add(where, f"bool in the {t.table.value} table needs 'bit' (0..15)")
            if t.bit is not None and t.type is not DataType.BOOL:
                problems.add(where, f"'bit' given for a {t.type.value} tag; expected type 'bool'")
            if t.bit is not None and t.writable:
                problems.add(where, "bits inside registers are read-only here; expected access 'read'")
        if t.table in (Table.INPUT, Table.DISCRETE) and t.writable:
            problems.add(where, f"the {t.table.value} table is read-only in Modbus; expected access 'read'")
    _check_overlaps([t for t in tags if t.has_modbus], problems)


def _check_overlaps(tags: list[Tag], problems: _Issues) -> None:
    """Registers may be shared only by one 16-bit word tag and bit tags with distinct bits."""
    by_space: dict[tuple[int, Table], list[Tag]] = {}
    for t in tags:
        by_space.setdefault((t.device_id, t.table), []).append(t)
    for (dev, table), items in by_space.items():
        owner: dict[int, Tag] = {}  # address -> non-bit tag occupying it
        bits: dict[tuple[int, int], Tag] = {}
        bit_regs: dict[int, Tag] = {}
        for t in sorted(items, key=lambda x: (x.address, x.name)):
            if t.bit is not None:
                key = (t.address, t.bit)
                if key in bits:
                    problems.add(
                        f"tag {t.name!r}",
                        f"bit {t.bit} of {table.value} register {t.address} (device {dev})"
                        f" is already tag {bits[key].name!r}; expected distinct bits",
                    )
                bits[key] = t
                o = owner.get(t.address)
                if o is not None and o.n_registers > 1:
                    problems.add(
                        f"tag {t.name!r}",
                        f"bit in {table.value} register {t.address} (device {dev}) overlaps"
                        f" {o.type.value} tag {o.name!r}; expected a bit of a 16-bit word or of a free register",
                    )
                bit_regs.setdefault(t.address, t)
                continue
            for a in range(t.address, t.address + t.n_registers):
                o = owner.get(a)
                if o is not None:
                    problems.add(
                        f"tag {t.name!r}",
                        f"{table.value} address {a} (device {dev}) overlaps tag {o.name!r};"
                        f" expected {t.name!r} to start at >= {o.address + o.n_registers}",
                    )
                    break
                b = bit_regs.get(a)
                if b is not None and t.n_registers > 1:
                    problems.add(
                        f"tag {t.name!r}",
                        f"{table.value} address {a} (device {dev}) holds bit tag {b.name!r};"
                        f" expected only a 16-bit word to share a register with bits",
                    )
                    break
                owner[a] = t
