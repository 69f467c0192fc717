"""``potline demo``: a HIL rig plus the controller closing the loop over the real protocols.

What it does (embedded defaults: the ``ae_storm`` scenario, one potroom of 132 cells,
1.5 plant hours at 50x, rectifier PLC over Modbus TCP, potroom PLC over OPC UA):

1. starts the rig in its own process (``python -m hil_rigs serve``): the twin behind a
   simulated rectifier PLC and potroom PLC(s), with an AE induced every minute;
2. starts the controller here (``BridgePlant`` + ``PotController`` + ``ControlRuntime``),
   connected to the PLCs only through their tag maps over Modbus/OPC UA;
3. shows progress (rich): plant time, AEs seen / quenched, line current and power;
4. writes a report (``report.html`` with PNG figures, and ``report.json``): cell
   voltages, every AE with its detection and quench, amperage and power, energy and PFC.

``run_demo(DemoOptions(...))`` is the library entry point; the CLI wrapper is
``potline/commands/demo.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoOptions", "DemoResult", "run_demo", "write_demo_report"]


@dataclass
class DemoOptions:
    """Knobs of the demo (None: the scenario's value).

    Attributes:
        scenario: scenario name or TOML path.
        hours: plant hours to simulate.
        speed: plant seconds per wall second.
        cells: cells per potroom; rooms: potrooms (one PLC each).
        scan_s: controller scan [plant s].
        potroom_protocol: ``opcua`` or ``modbus``.
        out: report directory.
        progress: show the rich progress display.
    """

    scenario: str = "ae_storm"
    hours: float = 1.5
    speed: float | None = 50.0
    cells: int | None = None
    rooms: int | None = None
    scan_s: float | None = None
    potroom_protocol: str | None = None
    out: Path = field(default_factory=lambda: Path("out/demo"))
    progress: bool = True


@dataclass
class DemoResult:
    """Everything the report is made of."""

    options: DemoOptions
    scenario: Any
    rig: Any  # RigReport
    controller: dict[str, Any]
    detected: list[tuple[int, float]]
    events: list[tuple[float, str, int, str]]
    wall_s: float
    checks: dict[str, tuple[bool, str]]


def _scenario(opts: DemoOptions) -> Any:
    from hil_rigs.scenarios import load_scenario

    base = load_scenario(opts.scenario)
    dur = float(opts.hours) * 3600.0
    ov: dict[str, Any] = {"scenario.duration_s": dur, "rig.record_every_s": 5.0}
    if opts.speed is not None:
        ov["scenario.speed"] = float(opts.speed)
    if opts.cells is not None:
        ov["plant.cells"] = int(opts.cells)
    if opts.rooms is not None:
        ov["plant.rooms"] = int(opts.rooms)
    if opts.scan_s is not None:
        ov["controller.scan_s"] = float(opts.scan_s)
    if opts.potroom_protocol is not None:
        ov["protocols.potroom"] = opts.potroom_protocol
    if base.ae_storm is not None:
        # the last part (10 min at most) shows the recovery
        ov["ae_storm.end_s"] = max(base.ae_storm.start_s, dur - min(600.0, 0.25 * dur))
    return load_scenario(base, **ov)


async def run_demo(opts: DemoOptions, console: Any = None) -> DemoResult:
    """Run the rig (child process) and the controller (here) for the demo; returns the result."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hil_rigs.process import RigProcess
    from hil_rigs.session import ControllerSession

    console = console or Console()
    sc = _scenario(opts)
    lay = sc.plant
    console.print(
        f"[bold]potline demo[/bold] — scenario [cyan]{sc.name}[/cyan]: {sc.scenario.description}\n"
        f"  plant: {lay.rooms} potroom(s) x {lay.cells} cells, {sc.duration_s / 3600:.1f} plant h at {sc.speed:g}x; "
        f"rectifier PLC over {sc.protocols.rectifier}, potroom PLC over {sc.protocols.potroom}; "
        f"controller scan {sc.controller.scan_s:g} s"
    )
    w0 = time.monotonic()
    rig = RigProcess(sc, workdir=Path(opts.out) / "rig", max_wall_s=sc.duration_s / sc.speed + 300.0)
    session = None
    stopped = False
    try:
        with console.status("starting the HIL rig (twin + simulated PLCs) ..."):
            endpoints = await rig.start()
        eps = ", ".join(f"{e['device']} {e['protocol']}://{e['host']}:{e['port']}"
                        for e in endpoints["rectifiers"] + endpoints["potrooms"])  # fmt: skip
        console.print(f"  rig up in {time.monotonic() - w0:.1f} s: {eps}")
        with console.status("connecting the controller ..."):
            session = await ControllerSession(sc, endpoints).start()
        status: dict[str, Any] = {}

        async def poll_rig() -> None:
            while True:
                with contextlib.suppress(Exception):
                    status.update((await rig.status())["summary"])
                await asyncio.sleep(1.0)

        poller = asyncio.create_task(poll_rig())
        progress = Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(bar_width=24), TextColumn("{task.fields[plant]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console, disable=not opts.progress,
        )  # fmt: skip
        with progress:
            console.print("  progress: AE = in twin under controller / detected / quench-commanded")
            task = progress.add_task("loop", total=sc.duration_s, plant="", info="")
            last = [0.0]

            def on_cycle(info: Any) -> None:
                now = time.monotonic()
                if now - last[0] < 0.25:
                    return
                last[0] = now
                m = session.runtime.last_measurements if session.runtime is not None else None
                i_ka = float(m.line_current_ka[0]) if m is not None else math.nan
                p_mw = float(m.line_current_ka[0] * m.line_voltage_v[0] / 1e3) if m is not None else math.nan
                t = session.clock.now()
                txt = (f"AE {status.get('aes_under_controller', 0)}/{len(session.detected())}/"
                       f"{status.get('aes_quench_commanded', 0)} I {i_ka:.1f} kA P {p_mw:.1f} MW")  # fmt: skip
                progress.update(task, completed=min(t, sc.duration_s), plant=f"{t / 3600:4.2f} h", info=txt)

            session.on_cycle_user = on_cycle
            await session.run(sc.duration_s)
            progress.update(task, completed=sc.duration_s)
        poller.cancel()
        await session.stop()
        stopped = True
        with console.status("stopping the rig ..."):
            rep = await rig.stop()
    finally:
        if session is not None and not stopped:
            await session.stop()
        await rig.close()
    wall = time.monotonic() - w0
    checks = _checks(rep, session)
    return DemoResult(opts, sc, rep, session.summary(), session.detected(), list(session.events), wall, checks)


def _checks(rep: Any, session: Any) -> dict[str, tuple[bool, str]]:
    """The demo's verdicts (the same assertions as the HIL tests)."""
    out: dict[str, tuple[bool, str]] = {}
    scan = session.scan_s
    win = (session.controller.cfg.detection.confirm_samples + 1) * scan + 0.5 * rep.speed

    def run(name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            out[name] = (True, "")
        except AssertionError as exc:
            out[name] = (False, str(exc).splitlines()[0] if str(exc) else "failed")

    run("every AE detected", lambda: rep.assert_all_aes_detected(session.detected(), win, min_visible_s=win))
    run("every AE quenched", lambda: rep.assert_all_aes_quenched(min_aes=1, min_visible_s=win))

    def clean() -> None:
        rep.assert_no_errors()
        _assert_clean(rep, session)

    run("no exception in rig or controller", clean)
    return out


def _assert_clean(rep: Any, session: Any) -> None:
    proc = rep.process or {}
    assert proc.get("returncode") in (0, None), f"rig exit code {proc.get('returncode')}"
    assert not proc.get("traceback"), "traceback in the rig's stderr"
    assert not session.errors, f"{len(session.errors)} controller cycle error(s)"


# ====================================================================== report


def write_demo_report(res: DemoResult, out: str | Path) -> Path:
    """Write ``report.html`` (+ PNGs) and ``report.json`` into ``out``; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from potline.report import Report, write_json

    out = Path(out)
    rep = res.rig
    sc = res.scenario
    tr = rep.trend
    t_h = np.asarray(tr["t_s"], dtype=float) / 3600.0
    u = np.asarray(tr["cell_voltage_v"], dtype=float)
    i = np.asarray(tr["line_current_ka"], dtype=float)
    sp = np.asarray(tr["setpoint_active_ka"], dtype=float)
    p = np.asarray(tr["power_mw"], dtype=float)
    summ = rep.summary()
    tot = rep.totals
    pfc = res.controller.get("pfc", {})
    lat = rep.quench_latencies_s()

    r = Report(
        "potline demo: controller vs HIL rig",
        subtitle=(f"{sc.name}: {sc.scenario.description}. {rep.n_cells} cells, {rep.plant_s / 3600:.2f} plant h at "
                  f"{rep.speed:g}x ({res.wall_s:.0f} s wall); rectifier over {sc.protocols.rectifier}, "
                  f"potroom over {sc.protocols.potroom}"),
    )  # fmt: skip
    s = r.section("Verdict")
    for name, (ok, why) in res.checks.items():
        s.badge(f"{name}: {'yes' if ok else 'NO'}", "ok" if ok else "bad")
        if why:
            s.text(why)
    s.kv({
        "anode effects in the twin": len(rep.aes),
        "AEs under controller (room in remote)": summ["aes_under_controller"],
        "AEs detected by the controller": len(res.detected),
        "AEs that got a quench command": summ["aes_quench_commanded"],
        "AE onset (PLC sees > 8 V) to quench command p50 [s]": summ["quench_latency_p50_s"],
        "... p99 [s]": summ["quench_latency_p99_s"],
        "AE duration p50 / max [s]": f"{summ['ae_duration_p50_s']:.0f} / {summ['ae_duration_max_s']:.0f}",
        "controller cycles / overruns": f"{res.controller['cycles']} / {res.controller['overruns']}",
        "PLC scan read p50 / p99 [ms]": f"{res.controller['read_ms_p50']:.1f} / {res.controller['read_ms_p99']:.1f}",
        "commands written (feed + beam)": res.controller.get("bridge", {}).get("commands", 0),
    }, caption="AE figures count only AEs while the potroom was under the controller (remote).")  # fmt: skip

    s = r.section("Cell voltages")
    fig, ax = plt.subplots(figsize=(11, 4.2))
    if u.size:
        im = ax.imshow(np.clip(u.T, 3.5, 12.0), aspect="auto", origin="lower", cmap="magma",
                       extent=(t_h[0], t_h[-1] if t_h.size > 1 else t_h[0] + 1e-3, 0.5, u.shape[1] + 0.5))  # fmt: skip
        fig.colorbar(im, ax=ax, label="cell voltage [V] (clipped 3.5–12)")
    ax.set_xlabel("plant time [h]")
    ax.set_ylabel("cell")
    ax.set_title("Cell voltages as the potroom PLC publishes them (bright = anode effect)")
    s.figure(fig, name="cell_voltages", caption="Every cell's voltage over the run, sampled every 5 plant s.")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(11, 3.4))
    if u.size:
        ax.plot(t_h, np.median(u, axis=1), color="tab:blue", lw=1, label="median cell")
        ax.plot(t_h, u.max(axis=1), color="tab:red", lw=0.8, label="highest cell")
    ax.set_yscale("log")
    ax.set_xlabel("plant time [h]")
    ax.set_ylabel("V")
    ax.legend(loc="upper right")
    s.figure(fig, name="cell_voltage_envelope", caption="Median and highest cell voltage (log scale).")
    plt.close(fig)

    s = r.section("Anode effects: detected and quenched")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2.2, 1]})
    for a in rep.aes:
        end = a["end_s"] if not math.isnan(a["end_s"]) else rep.twin_s
        color = "tab:red" if a["room_remote"] else "tab:gray"
        a1.plot([a["start_s"] / 3600, end / 3600], [a["cell"], a["cell"]], color=color, lw=4, solid_capstyle="butt")
        if not math.isnan(a["first_cmd_s"]):
            a1.plot(a["first_cmd_s"] / 3600, a["cell"], "k|", ms=8)
    for c, t0 in res.detected:
        a1.plot(t0 / 3600, c, "b.", ms=4)
    a1.set_xlabel("plant time [h]")
    a1.set_ylabel("cell")
    a1.set_title("AEs (red), detected (blue dot), quench command at the PLC (black tick)", fontsize=9)
    dur = rep.ae_durations_s()
    if dur.size:
        a2.hist(dur, bins=min(20, max(5, dur.size // 2)), color="tab:red", alpha=0.7, label="AE duration")
    if lat.size:
        a2.hist(lat, bins=min(20, max(5, lat.size // 2)), color="tab:blue", alpha=0.7, label="onset → quench cmd")
    a2.set_xlabel("plant s")
    a2.legend(fontsize=8)
    s.figure(fig, name="anode_effects", caption="Each AE from onset to end; gray: the room was in local control.")
    plt.close(fig)
    rows = []
    det: dict[int, list[float]] = {}
    for c, t0 in res.detected:
        det.setdefault(c, []).append(t0)
    for a in rep.aes:
        d = [t for t in det.get(a["cell"], []) if not math.isnan(a["visible_s"]) and abs(t - a["visible_s"]) < 120]
        rows.append({
            "cell": a["cell"] + 1,
            "start [s]": a["start_s"],
            "visible [s]": a["visible_s"],
            "detected [s]": d[0] if d else None,
            "quench command [s]": a["first_cmd_s"],
            "first command": a["first_cmd"],
            "end [s]": a["end_s"],
            "duration [s]": (a["end_s"] - a["start_s"]) if not math.isnan(a["end_s"]) else None,
            "peak [V]": a["peak_v"],
            "controller in charge": a["room_remote"],
        })  # fmt: skip
    s.table(rows[:200], caption="Times in plant seconds; 'visible' = first PLC scan with the cell above 8 V.")

    s = r.section("Amperage and power")
    fig, (b1, b2) = plt.subplots(2, 1, figsize=(11, 5.2), sharex=True)
    if i.size:
        b1.plot(t_h, i[:, 0], lw=0.8, label="line current (DCCT)")
        b1.plot(t_h, sp[:, 0], lw=1.2, ls="--", label="rectifier active setpoint")
        b2.plot(t_h, p[:, 0], lw=0.8, color="tab:green")
    b1.set_ylabel("kA")
    b1.legend(loc="lower right")
    b2.set_ylabel("line power [MW]")
    b2.set_xlabel("plant time [h]")
    s.figure(fig, name="amperage", caption="Line 1: measured current, the rectifier PLC's active setpoint, DC power.")
    plt.close(fig)
    calm = np.asarray(tr["cells_in_ae"]) == 0
    if i.size and calm.any():
        err = np.abs(i[calm, 0] - sp[calm, 0])
        s.kv({"|I − setpoint| p50 [kA] (no AE)": float(np.median(err)),
              "|I − setpoint| p99 [kA] (no AE)": float(np.percentile(err, 99)),
              "mean line power [MW]": float(p[:, 0].mean())})  # fmt: skip

    s = r.section("Energy and PFC")
    e_mwh = (
        np.concatenate([[0.0], np.cumsum(0.5 * (p[1:, 0] + p[:-1, 0]) * np.diff(t_h))])
        if p.shape[0] > 1
        else np.zeros(1)
    )
    fig, ax = plt.subplots(figsize=(11, 3.0))
    ax.plot(t_h[: e_mwh.size], e_mwh, color="tab:purple")
    ax.set_xlabel("plant time [h]")
    ax.set_ylabel("DC energy [MWh]")
    s.figure(fig, name="energy", caption="Cumulative DC energy delivered by the rectifier.")
    plt.close(fig)
    s.kv({
        "electrical energy into the cells [kWh] (twin)": tot.get("energy_kwh"),
        "metal produced [kg] (twin)": tot.get("metal_kg"),
        "specific energy [kWh/kg Al] (twin)": tot.get("specific_energy_kwh_per_kg"),
        "current efficiency (twin)": tot.get("current_efficiency"),
        "AE-minutes (twin)": tot.get("ae_minutes"),
        "CF4 [kg] (twin)": tot.get("cf4_kg"),
        "C2F6 [kg] (twin)": tot.get("c2f6_kg"),
        "AE-minutes (controller, IPCC Tier 2 input)": pfc.get("ae_minutes"),
        "AE per cell-day (controller)": pfc.get("ae_per_cell_day"),
        "CF4 [kg] (controller, Tier 2)": pfc.get("cf4_kg"),
        "C2F6 [kg] (controller, Tier 2)": pfc.get("c2f6_kg"),
        "CO2e [t] (controller, AR5 GWP)": pfc.get("co2e_t"),
    }, caption="Twin = the model's own books; controller = what it accounts from the AEs it detected (IPCC 2006 Tier 2 slope).")  # fmt: skip

    s = r.section("Run")
    s.kv({
        "scenario file": sc.source,
        "wall time [s]": round(res.wall_s, 1),
        "rig twin lag max [plant s]": round(rep.max_lag_s, 2),
        "PLC mode changes": len(rep.mode_log),
        "PLC refusals": sum(rep.refusals.values()),
        "rig exit code": (rep.process or {}).get("returncode"),
    })  # fmt: skip
    if rep.event_log:
        s.preformatted("\n".join(f"{t:8.0f} s  {e}" for t, e in rep.event_log[:60]))

    html = r.write(out)
    write_json(out / "report.json", {
        "scenario": sc.name,
        "wall_s": res.wall_s,
        "checks": {k: {"ok": ok, "detail": why} for k, (ok, why) in res.checks.items()},
        "rig": summ,
        "controller": res.controller,
        "totals": tot,
        "aes": rep.aes,
        "detected": res.detected,
    })  # fmt: skip
    return html
