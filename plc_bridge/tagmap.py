"""Tag maps: one TOML per device type, validated, expanded to concrete tags.

A tag map says, for every value a PLC exposes or accepts: its name and the bridge
*role* it plays (``plc_bridge.roles``), data type, unit, access, scaling
(``engineering = raw * scale + offset``), engineering bounds, plausibility range,
transforms (invert, a bit of a register, an enumeration), its Modbus location (table,
address in the map's base, device id, byte/word order) and/or its OPC UA node (browse
path and/or NodeId, namespace). Client, server, exporter and safety layer all read the
same ``TagMap``; a plant with another register layout changes the TOML, not the code.

File layout::

    [device]
    name = "rectifier"            # device type: rectifier | potroom (the roles it must give)
    instance = "Rectifier1"       # fills {instance} (the bridge uses the line / room name)
    device_id = 1                 # default Modbus unit id
    word_order = "ABCD"           # default for 32/64-bit tags: ABCD CDAB BADC DCBA (big = ABCD, little = CDAB)
    address_base = 0              # 0: addresses are protocol addresses; 1: 1-based (address 1 = protocol 0)
    namespace = "urn:acme:plc:{instance}"   # OPC UA namespace URI of unprefixed browse-path segments

    [[tags]]
    name = "line_current_sp"
    role = "line_current_sp"      # default: the tag name
    type = "float32"              # bool|int16|uint16|int32|uint32|float32|float64
    unit = "kA"
    access = "read-write"         # read | read-write
    min = 0.0                     # write bounds (read tags: engineering range, outside = UNCERTAIN)
    max = 200.0
    plausible_min = -1.0          # outside = BAD "implausible" (never acted on); floats: subnormals too
    plausible_max = 250.0
    modbus = { table = "holding", address = 0 }
    opcua = { browse_path = "Objects/{instance}/LineCurrentSetpoint" }

    [[tags]]
    name = "remote"
    type = "bool"
    invert = true                 # the PLC's bit says "local"
    modbus = { table = "input", address = 7, bit = 3 }   # bit 0 = least significant bit

    [[tags]]
    name = "tripped"
    type = "uint16"
    enum = { 0 = "OK", 1 = "WARNING", 2 = "TRIPPED" }    # other values: BAD
    true_when = ["TRIPPED"]       # read as a bool: True in these states
    modbus = { table = "input", address = 9 }

    [[tags]]
    name = "setpoint_active"
    alias_of = "line_current_sp"  # a read-only second role on the same register (location inherited)
    type = "float32"

    [cells]                       # optional repeated per-cell block
    count = 132
    first = 1                     # floor number of the first cell
    stride = 8                    # registers between consecutive cells (same in every table)
    base_address = 1000           # address of cell `first`, offset 0 (in the map's base)
    name = "cell{cell:03d}"       # prefix; tag "voltage" of cell 7 -> "cell007.voltage"

    [[cells.tags]]
    name = "voltage"
    type = "float32"
    modbus = { table = "input", offset = 0 }
    opcua = { browse_path = "Objects/{instance}/Cell{cell:03d}/Voltage" }

Over OPC UA a node carries engineering values; ``opcua = { ..., scale, offset }`` says
otherwise (``engineering = node value * scale + offset``). ``Tag.address`` is always
the 0-based protocol address, whatever the map's base.

Errors name the file, the key or tag and what was expected (``TagMapError``, the
config core's ``ConfigError``); all problems of a file are reported at once.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Field, field_validator, model_validator

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


def _word_order(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return WordOrder(v)
        except ValueError:
            raise ValueError(f"expected ABCD, CDAB, BADC or DCBA (big = ABCD, little = CDAB), got {v!r}") from None
    return v


#: a byte/word order in the ABCD notation (or big / little), any case
WordOrderSpec = Annotated[WordOrder, BeforeValidator(_word_order)]


class ModbusSpec(StrictModel):
    """Modbus location of a plain tag (``address`` in the map's ``address_base``)."""

    table: Table = Table.HOLDING
    address: int = Field(ge=0, le=65536, description="address in the map's base (protocol address + base)")
    device_id: int | None = Field(default=None, ge=0, le=255)
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of a register (bool tags), 0 = LSB")


class CellModbusSpec(StrictModel):
    """Modbus location of a per-cell tag: offset inside the cell's stride."""

    table: Table = Table.HOLDING
    offset: int = Field(ge=0, description="registers (or bits) from the cell's base address")
    bit: int | None = Field(default=None, ge=0, le=15, description="bit of a register (bool tags), 0 = LSB")


class OpcUaSpec(StrictModel):
    """OPC UA node: browse path (``Objects/Rectifier1/LineCurrent``) and/or NodeId string.

    ``scale``/``offset``: engineering = node value * scale + offset (default: the node
    carries engineering values).
    """

    browse_path: str | None = None
    node_id: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="after")
    def _one_of(self) -> OpcUaSpec:
        if not self.browse_path and not self.node_id:
            raise ValueError("opcua needs browse_path and/or node_id")
        if self.scale == 0:
            raise ValueError("opcua.scale must be non-zero")
        return self


class _TagBase(StrictModel):
    name: str = Field(pattern=_NAME_PATTERN)
    role: str | None = Field(default=None, pattern=_NAME_PATTERN)
    type: DataType
    word_order: WordOrderSpec | None = None
    unit: str = ""
    access: Access = "read"
    scale: float = 1.0
    offset: float = 0.0
    min: float | None = None
    max: float | None = None
    plausible_min: float | None = None
    plausible_max: float | None = None
    invert: bool = False
    enum: dict[str, str] | None = None
    true_when: list[str | int] | None = None
    alias_of: str | None = None
    wraps: bool = False
    description: str = ""
    opcua: OpcUaSpec | None = None

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: float) -> float:
        if v == 0:
            raise ValueError("expected a non-zero number")
        return v

    @field_validator("enum")
    @classmethod
    def _enum_ok(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError('expected at least one state, e.g. { 0 = "LOCAL", 1 = "REMOTE" }')
        for k in v:
            try:
                int(k)
            except ValueError:
                raise ValueError(f"state keys are the integer values, got {k!r}") from None
        return v


class TagSpec(_TagBase):
    modbus: ModbusSpec | None = None


class CellTagSpec(_TagBase):
    modbus: CellModbusSpec | None = None


class CellsSpec(StrictModel):
    count: int = Field(ge=1, le=10000)
    first: int = Field(default=1, ge=0)
    stride: int = Field(ge=1)
    base_address: int = Field(ge=0, le=65536, description="address of the first cell (in the map's base)")
    device_id: int | None = Field(default=None, ge=0, le=255)
    name: str = "cell{cell:03d}"
    tags: list[CellTagSpec] = Field(min_length=1)


class DeviceSpec(StrictModel):
    name: str = Field(pattern=_NAME_PATTERN)
    instance: str = ""
    description: str = ""
    device_id: int = Field(default=1, ge=0, le=255)
    word_order: WordOrderSpec = WordOrder.BIG
    address_base: Literal[0, 1] = 0
    namespace: str | None = Field(default=None, description="OPC UA namespace URI ({instance} allowed)")


class TagMapFile(StrictModel):
    device: DeviceSpec
    tags: list[TagSpec] = Field(default_factory=list)
    cells: CellsSpec | None = None


# ---------------------------------------------------------------- concrete tags


@dataclass(frozen=True, slots=True)
class Tag:
    """One concrete tag (per-cell templates already expanded).

    Engineering value = raw * ``scale`` + ``offset``, in ``unit``; bounds
    ``min``/``max`` are engineering values (None = the raw type's range): write bounds
    of a writable tag, the engineering range of a read one. ``plausible_min``/``_max``:
    outside is BAD (a broken transmitter or a wrong word order), never acted on.
    ``table``/``address``/``device_id`` locate it on Modbus (``address`` is the 0-based
    protocol address, -1 for a tag with no Modbus location; ``address_base`` the base
    the map was written in); ``bit`` is set for a bool inside a register (0 = LSB).
    ``role`` is what the bridge uses it for (default: the name, or the field of a cell
    tag); ``role_given`` says whether the map named it. ``invert`` negates a bool;
    ``enum`` lists the states of an integer ((value, label) pairs), ``true_when`` the
    values read as True. ``alias_of``: a read-only second name of another tag's register.
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
    role: str = ""
    role_given: bool = False
    invert: bool = False
    enum: tuple[tuple[int, str], ...] = ()
    true_when: frozenset[int] | None = None
    plausible_min: float | None = None
    plausible_max: float | None = None
    alias_of: str | None = None
    address_base: int = 0
    opcua_scale: float = 1.0
    opcua_offset: float = 0.0

    @property
    def writable(self) -> bool:
        return self.access == "read-write"

    @property
    def has_modbus(self) -> bool:
        return self.address >= 0

    @property
    def reads_bool(self) -> bool:
        """Its samples are bools (a bool tag, or an enumeration read through ``true_when``)."""
        return self.type is DataType.BOOL or self.true_when is not None

    @property
    def enum_map(self) -> dict[int, str]:
        """``{value: label}`` of an enumerated tag (empty otherwise)."""
        return dict(self.enum)

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
    def map_address(self) -> int | None:
        """The address as written in the map (in its ``address_base``); None without Modbus."""
        return self.address + self.address_base if self.has_modbus else None

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
    """The per-cell block after expansion (``base_address``: 0-based protocol address).

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
        device: device type name (``[device] name``: the kind whose roles it gives).
        instance: instance name used in browse paths.
        description: free text.
        tags: concrete tags by name, in file order (plain tags, then cells in order).
        cells: the per-cell block, if any.
        address_base: 0 or 1, the base the map's addresses are written in.
        namespace: OPC UA namespace URI of the tags (``{instance}`` filled), None = not said.
        word_order: the device's default byte/word order.
    """

    source: str
    device: str
    instance: str
    description: str
    tags: dict[str, Tag]
    cells: CellBlock | None = None
    address_base: int = 0
    namespace: str | None = None
    word_order: WordOrder = WordOrder.BIG
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

    @cached_property
    def roles(self) -> dict[str, str]:
        """Role -> name of the plain (not per-cell) tag that gives it."""
        return {t.role: t.name for t in self.tags.values() if t.cell is None}

    @cached_property
    def cell_roles(self) -> dict[str, str]:
        """Role -> per-cell field that gives it."""
        if self.cells is None:
            return {}
        out = {}
        for f in self.cells.fields:
            t0 = self.tags[self.cells.tag_names[f][0]]
            out[t0.role] = f
        return out

    def role_tag(self, role: str) -> Tag | None:
        """The plain tag giving ``role`` (None: the map does not give it)."""
        n = self.roles.get(role)
        return self.tags[n] if n is not None else None

    def role_field(self, role: str) -> str | None:
        """The per-cell field giving ``role`` (None: the map does not give it)."""
        return self.cell_roles.get(role)

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

    def with_bounds(self, name_or_role: str, lo: float | None, hi: float | None, why: str = "") -> TagMap:
        """A copy with the write bounds of one tag narrowed to ``[lo, hi]`` (never widened).

        ``name_or_role``: a tag name, else a role. Used for the plant's own limits (the
        rectifier's ``min_ka``/``max_ka`` from the plant config bound ``line_current_sp``).
        Raises KeyError when neither names a tag, ValueError when nothing is left.
        """
        tag = self.tags.get(name_or_role) or self.role_tag(name_or_role)
        if tag is None:
            raise KeyError(f"{self.source}: no tag or role {name_or_role!r}")
        new_lo = tag.lo if lo is None else max(tag.lo, lo)
        new_hi = tag.hi if hi is None else min(tag.hi, hi)
        if new_lo > new_hi:
            raise ValueError(
                f"{self.source}: {tag.name} bounds [{tag.lo:g}, {tag.hi:g}] and [{lo}, {hi}] ({why}) do not overlap"
            )
        desc = tag.description + (f" (bounded to [{new_lo:g}, {new_hi:g}] by {why})" if why else "")
        new = replace(tag, min=new_lo, max=new_hi, description=desc)
        tags = {n: (new if n == tag.name else t) for n, t in self.tags.items()}
        return replace(self, tags=tags, _index={})

    # -------------------------------------------------------------- export

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per tag (columns ``EXPORT_COLUMNS``), for CSV/JSON export."""
        out = []
        for t in self.tags.values():
            multi = t.n_registers > 1
            byte_swapped = t.word_order.byte_swap and t.type is not DataType.BOOL
            out.append(
                {
                    "name": t.name,
                    "role": t.role,
                    "type": t.type.value,
                    "word_order": t.word_order.notation if (multi or byte_swapped) and t.has_modbus else "",
                    "byte_order": ("BA" if byte_swapped else "AB") if t.has_modbus and not t.table.is_bits else "",
                    "registers": t.n_registers if t.has_modbus else "",
                    "unit": t.unit,
                    "access": t.access,
                    "scale": t.scale,
                    "offset": t.offset,
                    "min": t.min if t.min is not None else "",
                    "max": t.max if t.max is not None else "",
                    "plausible_min": t.plausible_min if t.plausible_min is not None else "",
                    "plausible_max": t.plausible_max if t.plausible_max is not None else "",
                    "invert": "true" if t.invert else "",
                    "enum": "; ".join(f"{k}={v}" for k, v in t.enum),
                    "true_when": "; ".join(str(v) for v in sorted(t.true_when)) if t.true_when is not None else "",
                    "alias_of": t.alias_of or "",
                    "table": t.table.value if t.has_modbus else "",
                    "address_0based": t.address if t.has_modbus else "",
                    "address_1based": t.address + 1 if t.has_modbus else "",
                    "address_base": t.address_base if t.has_modbus else "",
                    "address_in_map": t.map_address if t.has_modbus else "",
                    "bit": t.bit if t.bit is not None else "",
                    "bit_numbering": BIT_NUMBERING if t.bit is not None else "",
                    "device_id": t.device_id if t.has_modbus else "",
                    "modbus_ref": t.modbus_ref,
                    "opcua_namespace_uri": (self.namespace or "") if (t.browse_path or t.node_id) else "",
                    "opcua_browse_path": t.browse_path or "",
                    "opcua_node_id": t.node_id or "",
                    "opcua_scale": t.opcua_scale if (t.browse_path or t.node_id) and t.opcua_scale != 1.0 else "",
                    "opcua_offset": t.opcua_offset if (t.browse_path or t.node_id) and t.opcua_offset != 0.0 else "",
                    "cell": t.cell if t.cell is not None else "",
                    "description": t.description,
                }
            )
        return out

    def conventions(self) -> dict[str, Any]:
        """What every row of the export assumes, spelled out for the integrator."""
        return {
            "address_base": self.address_base,
            "addresses": "address_0based is the Modbus protocol address (PDU); address_1based = protocol + 1;"
            " address_in_map is the address as written in the tag map (address_base); modbus_ref is the"
            " six-digit Modicon reference (400001 = holding register at protocol address 0)",
            "word_order": f"{self.word_order.notation} by default; notation: the value's bytes A (most significant)"
            " .. D (H for 64 bit) in register order; ABCD = big-endian words, CDAB = word-swapped,"
            " BADC = byte-swapped, DCBA = both; 16-bit values: AB, or BA for BADC/DCBA",
            "bit_numbering": BIT_NUMBERING + ": modbus_ref 300008.1 is bit 1 of input register 300008",
            "engineering": "raw * scale + offset (Modbus); OPC UA: node value * opcua_scale + opcua_offset",
            "quality": "outside [min, max]: UNCERTAIN; outside [plausible_min, plausible_max], a subnormal float,"
            " a value not in enum or non-finite: BAD",
            "opcua_namespace_uri": self.namespace or "",
            "opcua_browse_path": "segments without a namespace prefix are in opcua_namespace_uri",
        }

    def export_csv(self, path: str | Path) -> Path:
        """Write the map as CSV (one row per tag, conventions in the columns); returns the path."""
        p = Path(path)
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(EXPORT_COLUMNS))
            w.writeheader()
            w.writerows(self.rows())
        return p

    def export_json(self, path: str | Path) -> Path:
        """Write the map as JSON ``{"device", "instance", "conventions", "tags": [...]}``; returns the path."""
        p = Path(path)
        doc = {
            "device": self.device,
            "instance": self.instance,
            "description": self.description,
            "source": self.source,
            "address_base": self.address_base,
            "namespace_uri": self.namespace,
            "word_order": self.word_order.notation,
            "engineering": "raw * scale + offset",
            "conventions": self.conventions(),
            "tags": [{k: v for k, v in r.items() if v != ""} for r in self.rows()],
        }
        p.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return p


#: how bits of a register are numbered (exports, docs)
BIT_NUMBERING = "bit 0 = least significant bit of the register value, bit 15 = most significant"

EXPORT_COLUMNS = (
    "name", "role", "type", "word_order", "byte_order", "registers", "unit", "access", "scale", "offset", "min",
    "max", "plausible_min", "plausible_max", "invert", "enum", "true_when", "alias_of", "table", "address_0based",
    "address_1based", "address_base", "address_in_map", "bit", "bit_numbering", "device_id", "modbus_ref",
    "opcua_namespace_uri", "opcua_browse_path", "opcua_node_id", "opcua_scale", "opcua_offset", "cell",
    "description",
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
    for i, ts in enumerate(spec.tags):
        tags.append(_concrete(ts, spec.device, inst, problems, where=f"tags[{i}:{ts.name}]"))
    cells = None
    if spec.cells is not None:
        cells = _expand_cells(spec.cells, spec.device, inst, tags, problems)
    tags = _resolve_aliases(tags, spec, problems)
    _check(tags, problems)
    _check_roles(tags, problems)
    namespace = _fmt(spec.device.namespace, "device.namespace", problems, instance=inst)
    if problems:
        raise TagMapError(problems)
    return TagMap(
        source=source,
        device=spec.device.name,
        instance=inst,
        description=spec.device.description,
        tags={t.name: t for t in tags},
        cells=cells,
        address_base=spec.device.address_base,
        namespace=namespace,
        word_order=spec.device.word_order,
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


def _enum_of(ts: TagSpec | CellTagSpec, where: str, problems: _Issues) -> tuple[tuple[int, str], ...]:
    if ts.enum is None:
        return ()
    if not ts.type.is_int or ts.scale != 1.0 or ts.offset != 0.0:
        problems.add(where, f"enum needs an unscaled integer type; got {ts.type.value} (scale {ts.scale:g})")
        return ()
    return tuple(sorted((int(k), v) for k, v in ts.enum.items()))


def _true_when_of(ts: TagSpec | CellTagSpec, enum: tuple[tuple[int, str], ...], where: str,
                  problems: _Issues) -> frozenset[int] | None:  # fmt: skip
    if ts.true_when is None:
        return None
    if not ts.type.is_int:
        problems.add(where, f"true_when needs an integer (enumerated) tag; got {ts.type.value}")
        return None
    if ts.access != "read":
        problems.add(where, "true_when tags are read-only; expected access 'read'")
    by_label = {v: k for k, v in enum}
    out: set[int] = set()
    for v in ts.true_when:
        if isinstance(v, int):
            out.add(v)
        elif v in by_label:
            out.add(by_label[v])
        else:
            states = ", ".join(repr(x) for _, x in enum) or "none (no enum)"
            problems.add(where, f"true_when state {v!r} is not in the enumeration; expected one of {states}")
    if not out:
        problems.add(where, "true_when lists no state")
    return frozenset(out)


def _concrete(
    ts: TagSpec | CellTagSpec,
    dev: DeviceSpec,
    inst: str,
    problems: _Issues,
    *,
    where: str | None = None,
    name: str | None = None,
    table: Table | None = None,
    address: int = -1,
    device_id: int | None = None,
    cell: int | None = None,
) -> Tag:
    where = where or f"tag {name or ts.name!r}"
    mb = ts.modbus
    base = dev.address_base
    if isinstance(mb, ModbusSpec):
        table, device_id = mb.table, mb.device_id
        address = mb.address - base
        if address < 0 or address > 65535:
            problems.add(
                f"{where}.modbus.address",
                f"expected an address in [{base}, {65535 + base}] (address_base = {base}), got {mb.address}",
            )
            address = max(0, min(address, 65535))
    fmt_kw: dict[str, Any] = {"instance": inst}
    if cell is not None:
        fmt_kw["cell"] = cell
    bp = _fmt(ts.opcua.browse_path if ts.opcua else None, where, problems, **fmt_kw)
    nid = _fmt(ts.opcua.node_id if ts.opcua else None, where, problems, **fmt_kw)
    if ts.invert and ts.type is not DataType.BOOL and ts.true_when is None:
        problems.add(where, f"invert is for bool tags (or true_when states); got {ts.type.value}")
    enum = _enum_of(ts, where, problems)
    field_name = ts.name if cell is not None else None
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
        field=field_name,
        wraps=ts.wraps,
        role=ts.role or field_name or ts.name,
        role_given=ts.role is not None,
        invert=ts.invert,
        enum=enum,
        true_when=_true_when_of(ts, enum, where, problems),
        plausible_min=ts.plausible_min,
        plausible_max=ts.plausible_max,
        alias_of=ts.alias_of,
        address_base=base,
        opcua_scale=ts.opcua.scale if ts.opcua else 1.0,
        opcua_offset=ts.opcua.offset if ts.opcua else 0.0,
    )


def _resolve_aliases(tags: list[Tag], spec: TagMapFile, problems: _Issues) -> list[Tag]:
    """Aliases take their target's location (and encoding unless given); read-only, same type."""
    by_name = {t.name: t for t in tags}
    given: dict[str, set[str]] = {}
    for ts in spec.tags:
        given[ts.name] = set(ts.model_fields_set)
    if spec.cells is not None:
        for ct in spec.cells.tags:
            given[ct.name] = set(ct.model_fields_set)
    out = []
    for t in tags:
        if t.alias_of is None:
            out.append(t)
            continue
        where = f"tag {t.name!r}"
        target_name = t.alias_of
        if t.cell is not None and spec.cells is not None:
            target_name = f"{spec.cells.name.format(cell=t.cell)}.{t.alias_of}"
        target = by_name.get(target_name)
        if target is None or target.alias_of is not None:
            problems.add(where, f"alias_of {t.alias_of!r}: expected the name of a tag that is not an alias itself")
            out.append(t)
            continue
        if t.writable:
            problems.add(where, "an alias is read-only; expected access 'read' (write through its target)")
        if t.type is not target.type:
            problems.add(where, f"alias of {target.name!r} must have its type {target.type.value}, got {t.type.value}")
        own = given.get(t.field or t.name, set())
        if "modbus" in own and (t.table, t.address, t.device_id, t.bit) != (
            target.table, target.address, target.device_id, target.bit
        ):  # fmt: skip
            problems.add(where, f"an alias takes the location of {target.name!r}; leave out its modbus key")
        kw: dict[str, Any] = {
            "table": target.table, "address": target.address, "device_id": target.device_id, "bit": target.bit,
        }  # fmt: skip
        if "opcua" not in own:
            kw.update(browse_path=target.browse_path, node_id=target.node_id, opcua_scale=target.opcua_scale,
                      opcua_offset=target.opcua_offset)  # fmt: skip
        for key in ("word_order", "scale", "offset", "unit"):
            if key not in own:
                kw[key] = getattr(target, key)
        out.append(replace(t, **kw))
    return out


def _check_roles(tags: list[Tag], problems: _Issues) -> None:
    """One tag (or per-cell field) per role."""
    seen: dict[tuple[str, bool], str] = {}
    for t in tags:
        key = (t.role, t.cell is not None)
        label = t.field if t.cell is not None else t.name
        assert label is not None
        if key in seen and seen[key] != label:
            problems.add(
                f"tag {t.name!r}", f"role {t.role!r} is already given by {seen[key]!r}; expected one tag per role"
            )
            continue
        seen[key] = label


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
    base0 = cs.base_address - dev.address_base  # protocol address of the first cell
    if base0 < 0:
        problems.add("cells.base_address", f"expected >= {dev.address_base} (address_base), got {cs.base_address}")
        base0 = 0
    last_base = base0 + (cs.count - 1) * cs.stride
    if last_base + cs.stride - 1 > 65535:
        problems.add(
            "cells",
            f"last cell ends at protocol address {last_base + cs.stride - 1} > 65535;"
            f" expected base_address + count*stride <= {65536 + dev.address_base}",
        )
    try:
        cs.name.format(cell=cs.first)
    except (KeyError, IndexError, ValueError) as exc:
        problems.add("cells.name", f"template {cs.name!r} is invalid ({exc}); expected e.g. 'cell{{cell:03d}}'")
        return CellBlock(cs.count, cs.first, cs.stride, base0, cs.name, tuple(per_field), {})
    n_problems = len(problems)
    for k in range(cs.count):
        number = cs.first + k
        prefix = cs.name.format(cell=number)
        base = base0 + k * cs.stride
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
        base_address=base0,
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
        p_lo, p_hi = t.plausible_min, t.plausible_max
        if p_lo is not None and p_hi is not None and p_lo > p_hi:
            problems.add(where, f"plausible_min {p_lo:g} > plausible_max {p_hi:g}; expected min <= max")
        if (p_lo is not None or p_hi is not None) and (t.type is DataType.BOOL or t.true_when is not None):
            problems.add(where, "plausibility ranges are for numbers; a bool or true_when tag takes none")
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
                f"{t.type.value} at address {t.map_address} needs {t.n_registers} registers and"
                f" ends at {end + t.address_base}; expected address <= {65536 - t.n_registers + t.address_base}",
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
    _check_overlaps([t for t in tags if t.has_modbus and t.alias_of is None], problems)


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
