"""What the bridge needs from each kind of PLC: roles, in one place.

A tag map gives *roles* (``role = "..."`` on a tag; default: the tag's name, or the
field name of a per-cell tag). Each device kind declares its roles here: required ones
(a map without them is refused, naming the role and the device) and optional ones,
with what is lost without each (a stated capability loss, not an error). The bridge
(``plc_bridge.plant``), ``potline tags check``, ``potline check-config`` and the role
tables in docs/operations.md all read ``DEVICE_KINDS`` (the docs tables are
``markdown_table(kind)``; a test keeps them equal).

A new kind of PLC is one more ``DeviceKind`` entry (``REFINING_POT``, a scrap-refining
pot's, was); nothing else here changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from plc_bridge.tagmap import Tag, TagMap, TagMapError
from twin.configcore import ConfigIssue

__all__ = [
    "DEVICE_KINDS",
    "POTROOM",
    "RECTIFIER",
    "REFINING_POT",
    "DeviceKind",
    "Role",
    "RoleReport",
    "check_roles",
    "markdown_table",
    "require_roles",
]

#: what a role's value must be: a bool (a bit, or an enumeration read with true_when),
#: a number, or an integer counter
ValueKind = Literal["bool", "number", "counter"]


@dataclass(frozen=True, slots=True)
class Role:
    """One thing the bridge reads from or writes to a PLC.

    Attributes:
        name: the role name (``role = "..."`` in a tag map).
        access: ``read`` (the bridge reads it) or ``write`` (the bridge writes it; the
            tag must be read-write).
        kind: ``bool`` / ``number`` / ``counter`` (an integer that may wrap).
        unit: expected unit, "" when none (shown in the docs; not enforced).
        per_cell: given by a ``[cells]`` tag (one per cell), not a plain tag.
        required: a map without it is refused.
        use: what the bridge does with it.
        without: for an optional role, what is lost when a map does not give it.
    """

    name: str
    access: Literal["read", "write"]
    kind: ValueKind
    unit: str
    use: str
    per_cell: bool = False
    required: bool = True
    without: str = ""


@dataclass(frozen=True, slots=True)
class DeviceKind:
    """A kind of PLC the bridge talks to and the roles its tag map must give."""

    name: str
    title: str
    roles: tuple[Role, ...]
    cells: bool = False

    def role(self, name: str) -> Role:
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(f"{self.name}: no role {name!r}")

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.roles)


_NOT_ALIVE = (
    "PLC-alive check and PLC restart detection off: writes are not refused when the PLC's own"
    " scan stops (its watchdog on heartbeat_out still hands it back to local)"
)

_NO_HX = "the shell heat-exchanger duty is not sent (`Commands.hx_duty_kw` ignored: the PLC holds its own)"
_NO_ALF3 = (
    "AlF3 additions are not sent (`Commands.alf3_kg` ignored; the PLC's own AlF3 schedule keeps running);"
    " all three of alf3_kg, alf3_cmd and alf3_cmd_ack are needed"
)

RECTIFIER = DeviceKind(
    "rectifier",
    "Rectifier PLC (one per line; {instance} = the line name)",
    (
        Role("line_current", "read", "number", "kA",
             "the line current (DCCT); must be GOOD for the line's data to count (`line_ok`)"),
        Role("line_voltage", "read", "number", "V",
             "the DC voltage (headroom, power); GOOD or UNCERTAIN (an AE can push a long line past the range)"),
        Role("setpoint_active", "read", "number", "kA",
             "the setpoint the PLC regulates to now; GOOD or UNCERTAIN; bumpless resume; a read-only alias of"
             " the setpoint register (`alias_of`) for a PLC without a separate one"),
        Role("tripped", "read", "bool", "",
             "protection trip; GOOD for `line_ok`; interlock: no setpoint while tripped"),
        Role("remote", "read", "bool", "",
             "the PLC accepts remote setpoints; GOOD for `line_ok`; interlock: no setpoint in local;"
             " hand-back waits for it to go false"),
        Role("line_current_sp", "write", "number", "kA",
             "the setpoint: bounded by the map's `min`/`max`, the plant's rectifier limits and `[safety]`,"
             " ramp-limited, interlocked, deadbanded, read back"),
        Role("heartbeat_out", "write", "counter", "",
             "incremented every cycle in control; the PLC drops to local when it stops"),
        Role("heartbeat_in", "read", "counter", "",
             "the PLC's watchdog counter: unchanged for `safety.plc_heartbeat_timeout_s` -> writes refused",
             required=False, without=_NOT_ALIVE),
        Role("tap_position", "read", "number", "",
             "on-load tap-changer position (1-based), passed on",
             required=False, without="the tap-changer position is unknown to the controller (reported as 0)"),
        Role("grid_limit_mw", "read", "number", "MW",
             "the line power the grid operator allows now (written by the grid operator's RTU; 0 = no request):"
             " the daemon sheds the line current to meet it at the rectifier's ramp and resumes its plan after",
             required=False, without="no grid shed requests over the wire (a shed is the operators' business)"),
    ),
)  # fmt: skip

POTROOM = DeviceKind(
    "potroom",
    "Potroom PLC (one per operating room; {instance} = the room name; the [cells] block is resized to the room)",
    (
        Role("remote", "read", "bool", "",
             "the room accepts feeder/beam commands (`cell_remote`); interlock `room_remote`"),
        Role("heartbeat_out", "write", "counter", "", "as for the rectifier"),
        Role("heartbeat_in", "read", "counter", "",
             "PLC alive; a jump back is a PLC restart (`plc_restart_seen`: counters restart from 0, pending"
             " commands dropped)",
             required=False, without=_NOT_ALIVE + "; a restart is seen only from acknowledgement counters going back"),
        Role("voltage", "read", "number", "V",
             "the cell voltage; BAD, non-finite, implausible or frozen -> the cell is neither judged nor commanded",
             per_cell=True),
        Role("tapping", "read", "bool", "", "metal tapping: no beam move", per_cell=True),
        Role("anode_change", "read", "bool", "", "anode change: no beam move", per_cell=True),
        Role("cut_out", "read", "bool", "", "cell shorted out of the series: nothing is sent to it", per_cell=True),
        Role("ae", "read", "bool", "", "the PLC's own AE bit: cells in AE get their commands first",
             per_cell=True, required=False,
             without="cells in AE are not put first in the command queue (the controller's own AE detection"
                     " is unaffected)"),
        Role("feed_ack", "read", "counter", "shots",
             "shots the PLC really dumped, cumulative (wraps at 65536), unwrapped into a monotonic total",
             per_cell=True),
        Role("beam_ack", "read", "number", "mm", "cumulative beam movement the PLC really made", per_cell=True),
        Role("feed_shots", "write", "number", "shots", "feed command: shots requested", per_cell=True),
        Role("feed_cmd", "write", "counter", "", "feed command counter, bumped after feed_shots", per_cell=True),
        Role("feed_cmd_ack", "read", "counter", "",
             "the last feed counter the PLC carried out; the next command waits for it", per_cell=True),
        Role("beam_move", "write", "number", "mm", "beam command: move requested (+ raises the anodes)",
             per_cell=True),
        Role("beam_cmd", "write", "counter", "", "beam command counter, bumped after beam_move", per_cell=True),
        Role("beam_cmd_ack", "read", "counter", "",
             "the last beam counter the PLC carried out; the next command waits for it", per_cell=True),
        Role("hx_duty_sp", "write", "number", "kW",
             "shell heat-exchanger duty to hold (+ extracts heat, − insulates): a value outside the map's"
             " `min`/`max` is refused (not clamped), deadbanded, interlocked like the commands",
             per_cell=True, required=False, without=_NO_HX),
        Role("hx_duty", "read", "number", "kW", "the duty the exchanger delivers (`Measurements.hx_duty_kw`)",
             per_cell=True, required=False, without="the delivered exchanger duty is not reported (NaN)"),
        Role("shell_temp", "read", "number", "°C", "side-wall (shell) thermocouple (`Measurements.shell_temp_c`)",
             per_cell=True, required=False, without="the shell temperature is not reported (NaN)"),
        Role("alf3_kg", "write", "number", "kg",
             "AlF3 addition requested with the next AlF3 command; outside the map's `max` refused, not clamped",
             per_cell=True, required=False, without=_NO_ALF3),
        Role("alf3_cmd", "write", "counter", "", "AlF3 command counter, bumped after alf3_kg; the first one to a"
             " cell in remote stops the PLC's own AlF3 schedule there", per_cell=True, required=False,
             without=_NO_ALF3),
        Role("alf3_cmd_ack", "read", "counter", "",
             "the last AlF3 counter the PLC carried out; the next command waits for it", per_cell=True,
             required=False, without=_NO_ALF3),
    ),
    cells=True,
)  # fmt: skip

REFINING_POT = DeviceKind(
    "refining_pot",
    "Scrap-refining pot PLC (one per pot; {instance} = the pot's name)",
    (
        Role("current", "read", "number", "A", "the pot current (interval mean); must be usable for the data to count"),
        Role("voltage", "read", "number", "V", "the pot voltage (interval mean): the observer's main signal"),
        Role("temperature", "read", "number", "°C", "the pot temperature: process limits, heater loop"),
        Role("heater_power", "read", "number", "kW", "auxiliary heater power (energy balance)"),
        Role("tapped_total_kg", "read", "number", "kg", "metal tapped this cycle (weighed): inventory, taps seen"),
        Role("scrap_total_kg", "read", "number", "kg", "scrap charged this cycle"),
        Role("cycle_time_h", "read", "number", "h", "time since the cycle started: the controller's clock"),
        Role("remote", "read", "bool", "", "the pot accepts remote commands; interlock: nothing is sent in local;"
             " hand-back waits for it to go false"),
        Role("cycle_ended", "read", "bool", "", "the cycle is over; interlock: no setpoint, charge or tap after it"),
        Role("current_sp", "write", "number", "A",
             "current setpoint: bounded by the map and the pot's [safety] current_min/max_a, ramp-limited to"
             " ramp_a_per_h, deadbanded, read back"),
        Role("heater_sp", "write", "number", "°C", "heater setpoint: bounded by [safety] heater_setpoint_min/max_c"),
        Role("charge_kg", "write", "number", "kg", "scrap charge request, at most [safety] charge_max_kg"),
        Role("charge_cmd", "write", "counter", "", "charge counter, bumped after charge_kg"),
        Role("tap_kg", "write", "number", "kg", "tap request, at most [safety] tap_max_kg"),
        Role("tap_cmd", "write", "counter", "", "tap counter, bumped after tap_kg"),
        Role("heartbeat_out", "write", "counter", "",
             "incremented every cycle in control; the PLC holds its setpoints in local when it stops"),
        Role("heartbeat_in", "read", "counter", "", "the PLC's scan counter: unchanged too long -> writes refused",
             required=False, without=_NOT_ALIVE),
        Role("charge_cmd_ack", "read", "counter", "", "the last charge counter the PLC carried out",
             required=False, without="charges are sent without seeing them acknowledged (a refused one is not noticed)"),
        Role("tap_cmd_ack", "read", "counter", "", "the last tap counter the PLC carried out",
             required=False, without="taps are sent without seeing them acknowledged (a refused one is not noticed)"),
        Role("stop_request", "write", "bool", "", "ends the cycle when the candidate asks", required=False,
             without="a candidate's stop request is journalled, not sent (the crew ends the cycle)"),
        Role("assay_fe_pct", "read", "number", "%", "lab assay of the last tapped batch (Fe)", required=False,
             without="no Fe assays: purity and the Fe-trim policies run blind"),
        Role("assay_cu_pct", "read", "number", "%", "lab assay (Cu)", required=False,
             without="no Cu assays: purity judged on Fe and Si only"),
        Role("assay_si_pct", "read", "number", "%", "lab assay (Si)", required=False,
             without="no Si assays: purity judged on Fe and Cu only"),
        Role("assay_seq", "read", "counter", "", "assays received this cycle (0: none yet)", required=False,
             without="the assay registers are taken as a fresh assay from the first scan"),
        Role("last_tap_kg", "read", "number", "kg", "the last tap weighed (shown)", required=False,
             without="taps are seen from tapped_total_kg only"),
        Role("energy_dc_kwh", "read", "number", "kWh", "DC energy meter", required=False,
             without="DC energy is not metered: the candidate sees none (kWh/kg from its own U·I)"),
        Role("energy_aux_kwh", "read", "number", "kWh", "heater energy meter", required=False,
             without="heater energy is not metered"),
        Role("end_reason", "read", "number", "", "why the cycle ended", required=False,
             without="an ended cycle is journalled without its reason"),
    ),
)  # fmt: skip

#: every device kind the bridge knows, by ``[device] name``
DEVICE_KINDS: dict[str, DeviceKind] = {k.name: k for k in (RECTIFIER, POTROOM, REFINING_POT)}


@dataclass(frozen=True)
class RoleReport:
    """What a tag map gives of its device kind's roles.

    Attributes:
        kind: the device kind (None: the map's device is not one the bridge knows).
        device: ``kind instance`` for messages, e.g. ``rectifier Line1``.
        bound: role -> tag name (plain roles) or cell field (per-cell roles).
        errors: (role, message): missing required roles, wrong type or access, unknown roles.
        losses: (role, what is lost) for each optional role the map does not give.
    """

    kind: DeviceKind | None
    device: str
    bound: dict[str, str] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    losses: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def loss_lines(self) -> list[str]:
        """``no heartbeat_in: PLC-alive check ... off`` per missing optional role."""
        return [f"no {r}: {why}" for r, why in self.losses]


def _type_problem(role: Role, t: Tag) -> str:
    if role.kind == "bool" and not t.reads_bool:
        return f"expected a bool (a bit, or an enumeration with true_when), got {t.type.value} tag {t.name!r}"
    if role.kind != "bool" and t.reads_bool:
        return f"expected a {role.kind}, got bool tag {t.name!r}"
    if role.kind == "counter" and not t.type.is_int:
        return f"expected an integer counter, got {t.type.value} tag {t.name!r}"
    if role.access == "write" and not t.writable:
        return f"the bridge writes it; tag {t.name!r} is read-only (expected access 'read-write')"
    if role.access == "write" and t.alias_of is not None:
        return f"the bridge writes it; {t.name!r} is an alias (write the tag it aliases)"
    return ""


def check_roles(tagmap: TagMap, kind: str | None = None) -> RoleReport:
    """Which roles of its device kind ``tagmap`` gives (``kind`` default: ``[device] name``)."""
    kname = kind or tagmap.device
    dk = DEVICE_KINDS.get(kname)
    device = f"{kname} {tagmap.instance}".strip()
    rep = RoleReport(dk, device)
    if dk is None:
        return rep
    if dk.cells and tagmap.cells is None:
        rep.errors.append(("cells", f"a {kname} map needs a [cells] block (the per-cell roles)"))
    for role in dk.roles:
        if role.per_cell:
            f = tagmap.role_field(role.name)
            t = tagmap[tagmap.cell_tags(f)[0]] if f is not None else None
            label = f
        else:
            t = tagmap.role_tag(role.name)
            label = t.name if t is not None else None
        if t is None or label is None:
            if role.required:
                where = "a [cells] tag" if role.per_cell else "a tag"
                rep.errors.append((role.name, f"required role {role.name!r} of the {device} is given by no tag;"
                                              f" expected {where} with role = {role.name!r} ({role.access},"
                                              f" {role.kind}{', ' + role.unit if role.unit else ''}: {role.use})"))  # fmt: skip
            else:
                rep.losses.append((role.name, role.without))
            continue
        why = _type_problem(role, t)
        if why:
            rep.errors.append((role.name, f"role {role.name!r} of the {device}: {why}"))
            continue
        rep.bound[role.name] = label
    known = set(dk.role_names)
    for t in tagmap:
        if t.role_given and t.role not in known and (t.cell is None or t.name == tagmap.cell_tags(t.field or "")[0]):
            rep.errors.append((t.role, f"tag {t.name!r}: unknown role {t.role!r} for a {kname};"
                                       f" expected one of {', '.join(sorted(known))}"))  # fmt: skip
    return rep


def require_roles(tagmap: TagMap, kind: str | None = None) -> RoleReport:
    """``check_roles`` that raises ``TagMapError`` (file, ``roles.<role>``, message) on any error."""
    rep = check_roles(tagmap, kind)
    if rep.kind is None:
        raise TagMapError([ConfigIssue(tagmap.source, "device.name", f"expected a device kind the bridge knows"
                                       f" ({', '.join(DEVICE_KINDS)}), got {tagmap.device!r}")])  # fmt: skip
    if rep.errors:
        raise TagMapError([ConfigIssue(tagmap.source, f"roles.{r}", msg) for r, msg in rep.errors])
    return rep


def markdown_table(kind: str) -> str:
    """The role table of ``kind`` for docs/operations.md (kept equal by a test)."""
    dk = DEVICE_KINDS[kind]
    lines = [
        "| role | dir | kind / unit | required | what the bridge does with it | without it |",
        "|---|---|---|---|---|---|",
    ]
    for r in dk.roles:
        name = f"per cell `{r.name}`" if r.per_cell else f"`{r.name}`"
        unit = f"{r.kind}{' / ' + r.unit if r.unit else ''}"
        lines.append(
            f"| {name} | {r.access} | {unit} | {'yes' if r.required else 'no'} | {r.use} | {r.without or '—'} |"
        )
    return "\n".join(lines)


def read_roles(kind: DeviceKind, per_cell: bool) -> Iterable[Role]:
    """The roles of ``kind`` the bridge reads (per-cell ones or plain ones)."""
    return (r for r in kind.roles if r.access == "read" and r.per_cell == per_cell)
