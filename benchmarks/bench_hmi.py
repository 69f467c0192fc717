"""The web HMI's cost to the control cycle, and what a browser sees of it.

Setup: a HIL rig in its own process (the 660-cell reference plant; ``--quick``: one 132-cell
potroom) in real time, the controller here (``ControllerSession``: ``BridgePlant`` +
``PotController`` + ``ControlRuntime`` over Modbus TCP / OPC UA) with what a daemon gives
the operator (``potline.demo.SessionSurface``: journal, history, alarms and the HMI on a
``LocalSource``, fed every cycle). Browsers: headless Chromium from Debian
(``potline.hmi.browser``), each on the overview page with the live stream.

Measured, side by side in one run, phases alternating (none, 5 browsers, none, 5 browsers
...) so a change of machine load hits both alike:

* control cycle [wall ms]: read + step + write of ``ControlRuntime`` plus the surface's
  per-cycle work (journal, alarms, history, snapshot publish): p50/p99/max per phase;
* page load [wall s]: ``goto`` of the overview until every cell tile shows a scan;
* update latency [wall ms]: from the snapshot's publish (``LocalSource.publish``) to the
  page's tiles showing that scan (``data-seq``), per scan per browser; it includes the
  HMI's push pacing (``HmiConfig.push_interval_s``, 0.5 s), reported beside it.

Run: ``python -m benchmarks.bench_hmi [--quick] [--out PATH]``; JSON to
``benchmarks/results/hmi.json``. Needs ``chromium`` (Debian package).
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, header, md_table, write_result

NAME = "hmi"
BROWSERS = 5

_RENDER_PROBE = """
(() => { if (window.__probe) return true; window.__probe = []; let last = null;
  const tick = () => { const el = document.querySelector('.cells .cell');
    const s = el ? el.dataset.seq : null;
    if (s && s !== last) { last = s; window.__probe.push([+s, Date.now()]); }
    requestAnimationFrame(tick); };
  requestAnimationFrame(tick); return true; })()
"""


def _bootstrap(a: list[float], b: list[float], q: float, n: int = 2000, seed: int = 16) -> list[float]:
    """95 % bootstrap interval of percentile ``q`` of ``b`` minus that of ``a`` [ms] (seeded):
    an interval holding 0 means no change this run can measure."""
    if len(a) < 5 or len(b) < 5:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = [float(np.percentile(rng.choice(y, y.size), q) - np.percentile(rng.choice(x, x.size), q)) for _ in range(n)]
    lo, hi = np.percentile(d, [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def _stats(ms: list[float]) -> dict[str, float | int]:
    if not ms:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    a = np.asarray(ms, dtype=float)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3)}  # fmt: skip


async def run(quick: bool) -> dict[str, Any]:
    from hil_rigs.process import RigProcess
    from hil_rigs.scenarios import load_scenario
    from hil_rigs.session import ControllerSession
    from potline.demo import SessionSurface
    from potline.hmi.browser import Chromium

    phase_s = 15.0 if quick else 60.0
    rounds = 1 if quick else 3
    scan_s = 1.0
    plant: dict[str, Any] = {"plant.cells": 132} if quick else {"plant.config": "plant_reference.toml"}
    total = 2 * rounds * phase_s + 60.0 * (1 if quick else 2)
    sc = load_scenario("ae_storm", **{
        "scenario.speed": 1.0, "scenario.duration_s": total + 120.0, **plant, "plant.dt_s": 0.1,
        "rig.tick_wall_s": 0.01, "rig.record_every_s": 10.0, "rig.watchdog_s": 10.0, "protocols.potroom": "opcua",
        "protocols.rectifier": "modbus", "controller.scan_s": scan_s, "ae_storm.start_s": 20.0,
        "ae_storm.end_s": total, "ae_storm.every_s": 20.0,
    })  # fmt: skip
    rig = RigProcess(sc, max_wall_s=sc.duration_s + 300.0)
    work = Path(tempfile.mkdtemp(prefix="bench_hmi-"))
    cycles: dict[str, list[float]] = {"none": [], "browsers": []}
    overruns: dict[str, int] = {"none": 0, "browsers": 0}
    phase = ["warmup"]
    published: dict[int, float] = {}
    loads: list[float] = []
    updates: list[float] = []
    session = None
    surface = None
    try:
        endpoints = await rig.start(timeout_s=240.0)
        session = await ControllerSession(sc, endpoints).start()
        surface = SessionSurface(session, work)
        url = await surface.serve("127.0.0.1", 0)

        def on_cycle(info: Any) -> None:
            t0 = time.perf_counter()
            surface.on_cycle()
            published[surface._seq] = time.time() * 1e3
            extra = time.perf_counter() - t0
            if phase[0] in cycles:
                cycles[phase[0]].append((info.total_s + extra) * 1e3)
                overruns[phase[0]] += int(info.overrun)

        session.on_cycle_user = on_cycle
        task = session.run_in_background(sc.duration_s)
        await asyncio.sleep(20.0 if quick else 40.0)  # connections settle, JIT compiled
        async with Chromium() as browser:
            for _ in range(rounds):
                phase[0] = "none"
                await asyncio.sleep(phase_s)
                phase[0] = "opening"
                pages = []
                for _ in range(BROWSERS):
                    page = await browser.new_page()
                    w0 = time.perf_counter()
                    await page.goto(url + "/")
                    n = surface.layout.n_cells
                    await page.wait_for(f"document.querySelectorAll('.cells .cell[data-seq]').length === {n}", 120.0,
                                        "every tile showing a scan")  # fmt: skip
                    loads.append(time.perf_counter() - w0)
                    await page.evaluate(_RENDER_PROBE)
                    pages.append(page)
                phase[0] = "browsers"
                await asyncio.sleep(phase_s)
                phase[0] = "closing"
                for page in pages:
                    for seq, t_ms in await page.evaluate("window.__probe || []"):
                        if int(seq) in published:
                            updates.append(float(t_ms) - published[int(seq)])
                    await page.close()
        phase[0] = "done"
        await session.stop()  # stops the loop and waits for it
        assert task.done()
        await rig.stop()
    finally:
        if surface is not None:
            await surface.close()
        if session is not None:
            await session.stop()
        await rig.close()
    n = session.plant.layout.n_cells if session is not None and session.plant is not None else 0
    none, br = _stats(cycles["none"]), _stats(cycles["browsers"])
    return {
        "cells": n, "scan_s": scan_s, "browsers": BROWSERS, "phase_s": phase_s, "rounds": rounds,
        "push_interval_s": 0.5,
        "cycle_ms": {"none": none, "browsers": br},
        "cycle_p99_ratio": round(br["p99"] / none["p99"], 3) if none["n"] and br["n"] else math.nan,
        # browsers minus none, 95 % bootstrap intervals [ms]: holding 0 = no measurable change
        "cycle_diff_ci95_ms": {"p50": _bootstrap(cycles["none"], cycles["browsers"], 50),
                               "p99": _bootstrap(cycles["none"], cycles["browsers"], 99)},
        "overruns": overruns,
        "page_load_s": _stats(loads),
        "update_latency_ms": _stats(updates),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], NAME)
    args = p.parse_args(argv)
    from potline.hmi.browser import find_chromium

    if find_chromium() is None:
        print("bench_hmi: no Chromium (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    import logging

    import structlog

    logging.basicConfig(level=logging.ERROR)
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    res = asyncio.run(run(args.quick))
    doc = {**header(NAME, args.quick), **res}
    c = res["cycle_ms"]
    md = (
        f"# HMI cost and latency ({res['cells']} cells, scan {res['scan_s']:g} s, {res['browsers']} browsers)\n\n"
        + md_table(
            ["phase", "cycles", "p50 [ms]", "p99 [ms]", "max [ms]", "overruns"],
            [[k, c[k]["n"], c[k]["p50"], c[k]["p99"], c[k]["max"], res["overruns"][k]] for k in c],
        )
        + f"\n\nBrowsers minus none, 95 % bootstrap interval [ms]: {res['cycle_diff_ci95_ms']} "
        f"(machine load {doc['machine'].get('loadavg_1_5_15')})\n\n"
        f"Page load (overview, every tile showing a scan): {res['page_load_s']}\n\n"
        f"Update latency publish -> rendered [ms] (push pacing {res['push_interval_s']} s): {res['update_latency_ms']}\n"
    )
    out = write_result(doc, args.out, md)
    print(md)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
