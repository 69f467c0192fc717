"""Shared by the HMI tests (no tests here): a plant feed built from the real parts — an
``AlarmManager``, a ``History`` file filled with two hours of scans, a ``Journal`` file, a
mode handler that journals like the daemon — served by a real ``HmiServer`` on loopback."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plc_bridge.opcua_security import LoginPolicy, UserEntry, hash_password
from plc_bridge.ports import free_port
from potctl.plant import Measurements
from potline.alarms import AlarmManager, AlarmRecord
from potline.history import History, history_values, plant_groups, split_values
from potline.hmi import HmiConfig, HmiServer, LocalSource, snapshot_from_scan
from potline.journal import Journal
from potline.operator_inputs import Sample, SampleIntake
from twin.layout import PlantLayout
from twin.observer import AluminaObserver

USERS = {"olga": ("operator", "olga-secret"), "victor": ("viewer", "victor-secret")}
SCAN_S = 10.0


def make_plant(rooms: Sequence[int] = (24, 20, 16)) -> PlantLayout:
    room = np.repeat(np.arange(len(rooms)), rooms)
    numbers = np.concatenate([np.arange(1, n + 1) for n in rooms])
    n = len(room)
    return PlantLayout(
        plant="Alro", line_names=("Line1", "Line2"), room_names=tuple(f"Potroom{r + 1}" for r in range(len(rooms))),
        cell_line=(room >= 1).astype(np.int64), cell_room=room.astype(np.int64), cell_number=numbers.astype(np.int64),
        shot_mass_kg=np.full(n, 1.8), nominal_current_ka=np.array([180.0, 180.0]),
    )  # fmt: skip


def cell_voltage(k: np.ndarray, t: float) -> np.ndarray:
    """A recognisable voltage per cell and time: 4.1 V + 0.01 V per cell index + a slow wave."""
    return 4.1 + 0.01 * (k % 40) + 0.05 * np.sin(t / 600.0 + k)


@dataclass
class PlantFeed:
    """The plant side of the HMI tests: scans, alarms, journal, history."""

    layout: PlantLayout
    tmp: Path
    t0: float
    mode: str = "observe"
    scan_s: float = SCAN_S
    seq: int = 0
    t: float = 0.0
    ae: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    cut_out: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    local_rooms: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        n = self.layout.n_cells
        self.ae = np.zeros(n, bool)
        self.cut_out = np.zeros(n, bool)
        self.alarms = AlarmManager()
        self.journal = Journal(self.tmp / "journal.db", synchronous="NORMAL")
        self.history = History(self.tmp / "history.db")
        self.history.declare(plant_groups(self.layout))
        self.t = self.t0
        # operator inputs as the daemon takes them: journalled, into a real observer (alumina prior 3.0 wt%)
        self.observer = AluminaObserver(n, alumina_wt_pct=3.0, alumina_std=0.5)
        self.samples = SampleIntake(self.layout, journal=lambda: self.journal, observers=lambda: [self.observer])

    def enter_sample(self, data: dict, user: str) -> Sample:
        return self.samples.enter(data, user, self.t)

    # ------------------------------------------------------------------ the plant

    def measurements(self) -> Measurements:
        lay = self.layout
        n, nl = lay.n_cells, lay.n_lines
        k = np.arange(n)
        u = cell_voltage(k, self.t)
        u = np.where(self.ae, 32.0, u)
        remote = ~np.isin(lay.cell_room, list(self.local_rooms))
        bad = (k % 17) == 5  # a few cells with bad data
        tapping = (k % 11) == 3
        return Measurements(
            t_s=self.t - self.t0, line_current_ka=np.full(nl, 180.0), line_voltage_v=np.array([160.0, 150.0]),
            line_setpoint_ka=np.full(nl, 181.0), rectifier_remote=np.ones(nl, bool), rectifier_tripped=np.zeros(nl, bool),
            tap_position=np.ones(nl), cell_voltage_v=u, feeder_ack=np.floor(self.t / 90.0) + k,
            beam_ack_mm=np.zeros(n), tapping=tapping, anode_change=(k % 13) == 7, cut_out=self.cut_out.copy(),
            cell_ok=~bad, line_ok=np.ones(nl, bool), cell_remote=remote,
        )  # fmt: skip

    def scan(self) -> Measurements:
        """One scan: history written, snapshot published (the HMI is told by ``Rig.scan``)."""
        self.t += self.scan_s
        self.seq += 1
        meas = self.measurements()
        snap = {"CellVoltage": meas.cell_voltage_v, "LineCurrent": meas.line_current_ka,
                "LineVoltage": meas.line_voltage_v}  # fmt: skip
        # each value's status as the daemon keeps it: a cell without good data is BadNoCommunication
        codes = np.where(meas.cell_ok, 0, 0x80310000).astype(float)
        quality = {g: q.astype(np.uint32) for g, q in split_values(self.layout, {"CellVoltage": codes}).items()}
        self.history.write(self.t, split_values(self.layout, history_values(snap, meas)), quality)
        return meas

    def backfill(self, seconds: float) -> None:
        """History for the ``seconds`` before ``t0`` (a scan every ``scan_s``)."""
        t_now, self.t = self.t, self.t0 - seconds
        while self.t < t_now - self.scan_s:
            self.scan()
        self.t = t_now

    # ------------------------------------------------------------------ what the daemon would do

    def write_alarm_records(self, records: Sequence[AlarmRecord]) -> None:
        for r in records:
            self.journal.append(kind=r.journal_kind, plant=self.layout.plant, mode=self.mode, **r.journal_fields())
        self.journal.commit()

    async def set_mode(self, mode: str, user: str, reason: str) -> str:
        if mode not in ("observe", "shadow", "control"):
            self.journal.record(kind="mode_refused", source="hmi", user=user, mode=self.mode,
                                detail=f"unknown mode {mode!r}", data={"requested": mode})  # fmt: skip
            raise ValueError(f"expected observe, shadow or control, got {mode!r}")
        previous, self.mode = self.mode, mode
        self.journal.record(kind="mode_change", source="hmi", user=user, mode=mode,
                            detail=f"{previous} -> {mode}: {reason}", data={"from": previous, "to": mode,
                                                                             "reason": reason})  # fmt: skip
        return previous

    def raise_ae(self, k: int, peak_v: float = 32.0) -> list[AlarmRecord]:
        lay = self.layout
        room = lay.room_names[int(lay.cell_room[k])]
        num = int(lay.cell_number[k])
        self.ae[k] = True
        self.journal.record(kind="ae_start", plant=lay.plant, room=room, cell=num, value=peak_v,
                            t_plant_s=self.t - self.t0, source="controller", detail="AE")  # fmt: skip
        recs = self.alarms.on_event("ae_start", self.t - self.t0, area=room, cell=num, cell_index=k, value=peak_v)
        self.write_alarm_records(recs)
        return recs

    def end_ae(self, k: int, duration_s: float = 90.0) -> list[AlarmRecord]:
        lay = self.layout
        room = lay.room_names[int(lay.cell_room[k])]
        num = int(lay.cell_number[k])
        self.ae[k] = False
        self.journal.record(kind="ae_end", plant=lay.plant, room=room, cell=num, value=35.0,
                            t_plant_s=self.t - self.t0, source="controller", detail="AE end",
                            data={"duration_s": duration_s})  # fmt: skip
        recs = self.alarms.on_event("ae_end", self.t - self.t0, area=room, cell=num, cell_index=k)
        self.write_alarm_records(recs)
        return recs

    def close(self) -> None:
        self.journal.close()
        self.history.close()


@dataclass
class Rig:
    """A feed and the HMI serving it."""

    feed: PlantFeed
    source: LocalSource
    server: HmiServer

    @property
    def url(self) -> str:
        return self.server.url

    def scan(self) -> None:
        """One scan through to the HMI (history, snapshot, push)."""
        meas = self.feed.scan()
        snap = snapshot_from_scan(meas, seq=self.feed.seq, t=self.feed.t, mode=self.feed.mode, ae_active=self.feed.ae,
                                  feed_phase=(np.arange(self.feed.layout.n_cells) % 3) + 1)  # fmt: skip
        self.source.publish(snap)
        self.server.notify()

    async def close(self) -> None:
        await self.server.stop()
        self.source.close()
        self.feed.close()


def users() -> dict[str, UserEntry]:
    return {name: UserEntry(role=role, password_hash=hash_password(pw)) for name, (role, pw) in USERS.items()}  # type: ignore[arg-type]


async def start_rig(tmp: Path, *, rooms: Sequence[int] = (24, 20, 16), backfill_s: float = 7200.0,
                    anonymous: str = "read_only", push_interval_s: float = 0.05, scan_s: float = SCAN_S,
                    login_policy: LoginPolicy | None = None) -> Rig:  # fmt: skip
    """A plant feed with ``backfill_s`` of history and one scan, served on a free loopback port."""
    layout = make_plant(rooms)
    feed = PlantFeed(layout, tmp, t0=float(int(time.time())), scan_s=scan_s)
    feed.backfill(backfill_s)
    source = LocalSource(layout, feed.alarms, clock=lambda: feed.t - feed.t0, history_path=tmp / "history.db",
                         journal_path=tmp / "journal.db", alarm_writer=feed.write_alarm_records,
                         mode_handler=feed.set_mode, sample_writer=feed.enter_sample)  # fmt: skip
    cfg = HmiConfig(port=free_port(), push_interval_s=push_interval_s, anonymous=anonymous)  # type: ignore[arg-type]
    server = HmiServer(source, cfg, users=users(), login_policy=login_policy)
    await server.start()
    rig = Rig(feed, source, server)
    rig.scan()
    return rig
