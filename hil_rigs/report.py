"""What a rig run saw (``RigReport``, JSON-able) and the assertions HIL tests make on it.

Times are the rig's plant seconds. An AE record holds:

* ``start_s``: the twin's cell entered AE (model truth);
* ``visible_s``: the first PLC scan publishing its voltage above 8 V (what any
  controller can see first: "the rig's cell entering AE" for the latency figures);
* ``first_cmd_s``: the first quench command the potroom PLC received for the cell after
  that (a feed command of >= 2 shots, or a beam lowering of >= 10 mm), ``first_cmd``
  what it was;
* ``end_s``: the twin's AE ended (NaN while it lasts);
* ``room_remote``: the room was under remote (controller) control when it started.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RigAssertionError", "RigReport"]


class RigAssertionError(AssertionError):
    """A HIL expectation failed; the message lists what and where."""


@dataclass
class RigReport:
    scenario: str
    speed: float
    plant_s: float
    twin_s: float
    wall_s: float
    n_cells: int
    devices: list[str]
    aes: list[dict[str, Any]]
    mode_log: list[tuple[float, str, bool]]
    fault_log: list[tuple[float, str, bool]]
    event_log: list[tuple[float, str]]
    refusals: dict[str, int]
    commands: dict[str, int]
    trend: dict[str, list[Any]]
    totals: dict[str, Any]
    max_lag_s: float
    ticks: int
    errors: list[str]
    watchdog_trips: dict[str, int]
    expect: dict[str, Any] = field(default_factory=dict)
    setpoint_log: list[tuple[float, int, float, float]] = field(default_factory=list)
    process: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def write_json(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        return p

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RigReport:
        d = dict(d)
        for key in ("mode_log", "fault_log", "event_log", "setpoint_log"):
            d[key] = [tuple(x) for x in d.get(key, [])]
        for ae in d.get("aes", []):
            for k in ("visible_s", "first_cmd_s", "end_s", "start_s"):
                if ae.get(k) is None:
                    ae[k] = math.nan
        return cls(**d)

    # ------------------------------------------------------------------ figures

    def remote_aes(self, min_visible_s: float = 0.0) -> list[dict[str, Any]]:
        """AEs that became visible while their room was under remote control.

        ``min_visible_s`` drops AEs that died by themselves (no quench command) within that
        long of becoming visible: too short for any detector that confirms on consecutive scans.
        """
        out = []
        for a in self.aes:
            if not a["room_remote"] or math.isnan(a["visible_s"]):
                continue
            short = not math.isnan(a["end_s"]) and a["end_s"] - a["visible_s"] < min_visible_s
            if min_visible_s > 0 and short and math.isnan(a["first_cmd_s"]):
                continue
            out.append(a)
        return out

    def quench_latencies_s(self) -> np.ndarray:
        """Visible-to-first-quench-command latencies [plant s] of the AEs that got one."""
        lat = [a["first_cmd_s"] - a["visible_s"] for a in self.remote_aes() if not math.isnan(a["first_cmd_s"])]
        return np.asarray(lat, dtype=float)

    def ae_durations_s(self) -> np.ndarray:
        return np.asarray([a["end_s"] - a["start_s"] for a in self.aes if not math.isnan(a["end_s"])], dtype=float)

    def summary(self) -> dict[str, Any]:
        """Headline figures."""
        lat = self.quench_latencies_s()
        dur = self.ae_durations_s()
        remote = self.remote_aes()
        return {
            "scenario": self.scenario,
            "plant_s": round(self.plant_s, 1),
            "wall_s": round(self.wall_s, 2),
            "speed": self.speed,
            "cells": self.n_cells,
            "aes": len(self.aes),
            "aes_under_controller": len(remote),
            "aes_quench_commanded": int(lat.size),
            "quench_latency_p50_s": float(np.percentile(lat, 50)) if lat.size else math.nan,
            "quench_latency_p99_s": float(np.percentile(lat, 99)) if lat.size else math.nan,
            "ae_duration_p50_s": float(np.percentile(dur, 50)) if dur.size else math.nan,
            "ae_duration_max_s": float(dur.max()) if dur.size else math.nan,
            "mode_changes": len(self.mode_log),
            "faults": len([f for f in self.fault_log if f[2]]),
            "errors": len(self.errors),
            "max_lag_s": round(self.max_lag_s, 2),
        }

    # ------------------------------------------------------------------ assertions

    def assert_no_errors(self) -> None:
        """No exception was caught in the rig's scan loop or its protocol hooks."""
        if self.errors:
            raise RigAssertionError(f"{self.scenario}: {len(self.errors)} exception(s) in the rig:\n{self.errors[0]}")

    def assert_all_aes_quenched(self, max_duration_s: float | None = None, min_aes: int = 1,
                                end_margin_s: float | None = None, min_visible_s: float = 0.0) -> None:  # fmt: skip
        """Every AE under remote control got a quench command and ended within ``max_duration_s``.

        AEs still burning at the end of the run are judged only if they are older than
        ``max_duration_s``; AEs that died by themselves within ``min_visible_s`` of becoming
        visible are not judged (no detector could have confirmed them).
        """
        limit = max_duration_s if max_duration_s is not None else float(self.expect.get("max_ae_duration_s", 240.0))
        margin = limit if end_margin_s is None else end_margin_s
        judged = [a for a in self.remote_aes(min_visible_s)
                  if not (math.isnan(a["end_s"]) and self.twin_s - a["start_s"] < margin)]  # fmt: skip
        if len(judged) < min_aes:
            raise RigAssertionError(
                f"{self.scenario}: only {len(judged)} AE(s) under controller, expected >= {min_aes}"
            )
        bad = []
        for a in judged:
            dur = (a["end_s"] if not math.isnan(a["end_s"]) else self.twin_s) - a["start_s"]
            if math.isnan(a["first_cmd_s"]):
                bad.append(f"cell {a['cell']} AE at {a['start_s']:.0f} s: no quench command received")
            elif dur > limit:
                bad.append(f"cell {a['cell']} AE at {a['start_s']:.0f} s lasted {dur:.0f} s > {limit:g} s")
        if bad:
            raise RigAssertionError(
                f"{self.scenario}: {len(bad)} of {len(judged)} AEs not quenched:\n  " + "\n  ".join(bad[:20])
            )

    def assert_all_aes_detected(self, detected: list[tuple[int, float]], tolerance_s: float,
                                min_visible_s: float = 0.0) -> None:  # fmt: skip
        """Each visible AE under remote control (lasting ``min_visible_s`` at least) matches a
        controller detection ``(cell, start_s)`` on the same cell within ``tolerance_s`` of
        its visible time."""
        by_cell: dict[int, list[float]] = {}
        for c, t in detected:
            by_cell.setdefault(int(c), []).append(float(t))
        missed = []
        for a in self.remote_aes(min_visible_s):
            if self.plant_s - a["visible_s"] < tolerance_s:
                continue
            ts = by_cell.get(int(a["cell"]), [])
            if not any(abs(t - a["visible_s"]) <= tolerance_s for t in ts):
                missed.append(f"cell {a['cell']} AE visible at {a['visible_s']:.1f} s (controller saw {ts[:5]})")
        if missed:
            raise RigAssertionError(
                f"{self.scenario}: {len(missed)} AE(s) not detected:\n  " + "\n  ".join(missed[:20])
            )

    def assert_amperage_held(self, band_ka: float, after_s: float = 0.0, line: int = 0,
                             skip_ae: bool = True) -> float:  # fmt: skip
        """Line current within ``band_ka`` of the rectifier's active setpoint at every trend
        sample after ``after_s`` (samples with a cell in AE skipped); returns the worst error."""
        tr = self.trend
        t = np.asarray(tr.get("t_s", []), dtype=float)
        if t.size == 0:
            raise RigAssertionError(f"{self.scenario}: no trend recorded")
        i = np.asarray(tr["line_current_ka"], dtype=float)[:, line]
        sp = np.asarray(tr["setpoint_active_ka"], dtype=float)[:, line]
        tripped = np.asarray(tr["tripped"], dtype=bool)[:, line]
        sel = (t >= after_s) & ~tripped
        if skip_ae:
            sel &= np.asarray(tr["cells_in_ae"]) == 0
        if not sel.any():
            raise RigAssertionError(f"{self.scenario}: no trend sample to judge after {after_s:g} s")
        err = np.abs(i[sel] - sp[sel])
        worst = float(err.max())
        if worst > band_ka:
            k = int(np.argmax(err))
            raise RigAssertionError(
                f"{self.scenario}: line current off its setpoint by {worst:.2f} kA > {band_ka:g} kA at "
                f"t={t[sel][k]:.0f} s (I={i[sel][k]:.2f}, setpoint {sp[sel][k]:.2f} kA)"
            )
        return worst

    def mode_changes(self, device: str) -> list[tuple[float, bool]]:
        """(time, remote) transitions of ``device`` (``"potroom:Potroom1"``, or a prefix)."""
        return [(t, r) for t, d, r in self.mode_log if d == device or d.startswith(device)]

    def assert_fell_back_to_local(self, device: str, after_s: float, within_s: float) -> float:
        """``device`` went to local within ``within_s`` after ``after_s``; returns when."""
        for t, remote in self.mode_changes(device):
            if not remote and after_s <= t <= after_s + within_s:
                return t
        raise RigAssertionError(
            f"{self.scenario}: {device} did not fall back to local within {within_s:g} s of {after_s:g} s;"
            f" transitions {self.mode_changes(device)}"
        )

    def assert_back_to_remote(self, device: str, after_s: float, within_s: float) -> float:
        """``device`` returned to remote within ``within_s`` after ``after_s``; returns when."""
        for t, remote in self.mode_changes(device):
            if remote and after_s <= t <= after_s + within_s:
                return t
        raise RigAssertionError(
            f"{self.scenario}: {device} did not return to remote within {within_s:g} s of {after_s:g} s;"
            f" transitions {self.mode_changes(device)}"
        )

    def assert_bumpless(self, t_resume: float, max_step_ka: float, line: int = 0, window_s: float = 120.0) -> float:
        """After the rectifier returned to remote at ``t_resume``, no controller write moved the
        setpoint by more than ``max_step_ka`` from what the PLC held (setpoint tracking + ramp);
        returns the largest step seen. No write at all is bumpless too: the safety layer's
        setpoint deadband sends nothing while the wanted setpoint is what the PLC already holds."""
        steps = [abs(v - active) for t, li, v, active in self.setpoint_log
                 if li == line and t_resume <= t <= t_resume + window_s]  # fmt: skip
        worst = max(steps, default=0.0)
        if worst > max_step_ka:
            raise RigAssertionError(
                f"{self.scenario}: setpoint write stepped {worst:.3f} kA > {max_step_ka:g} kA after resuming at"
                f" {t_resume:.0f} s"
            )
        return worst


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj
