"""OPC UA mirror benchmark: 660 cells (5 rooms x 132), array layout vs one node per value.

Two measurements, each for both layouts, written side by side to
``benchmarks/results/opcua.json``:

* scan: time for one full scan with one batched Read (``OpcUaClient.read``) of the
  per-room array nodes (5 x 7 = 35 nodes) vs the per-cell scalar nodes (660 x 7 = 4,620);
* publish latency at 1 Hz with a subscribing client: from the server's write
  timestamp (DataValue.ServerTimestamp) to the client's receipt, p50/p99/max, plus
  the server-side time of one ``publish`` call. "array": the mirror publishes arrays
  only (scalar refresh off) and the client monitors the 35 array nodes; "naive":
  every per-cell scalar is rewritten at each publish (deadband 0) and the client
  monitors all 4,620 of them.

The server runs in its own process (as the daemon would), the client here; every
value changes at every publish. Run: ``python -m benchmarks.bench_opcua [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOMS, PER_ROOM = 5, 132
PUBLISHING_INTERVAL_MS = 50.0  # client subscription publishing interval
RESULTS = Path(__file__).resolve().parent / "results" / "opcua.json"
REPO = Path(__file__).resolve().parents[1]


def potline_layout():
    from twin.layout import PlantLayout

    n = ROOMS * PER_ROOM
    rooms = np.repeat(np.arange(ROOMS), PER_ROOM)
    return PlantLayout(
        plant="Alro",
        line_names=("Line1",),
        room_names=tuple(f"Room{r + 1}" for r in range(ROOMS)),
        cell_line=np.zeros(n, dtype=np.int64),
        cell_room=rooms.astype(np.int64),
        cell_number=np.tile(np.arange(1, PER_ROOM + 1), ROOMS).astype(np.int64),
        shot_mass_kg=np.full(n, 1.5),
        nominal_current_ka=np.array([120.0]),
    )


def snapshot(rng: np.random.Generator, k: int, n: int) -> dict[str, np.ndarray]:
    """Every value differs from the previous publish (booleans alternate)."""
    return {
        "CellVoltage": rng.uniform(4.0, 4.6, n),
        "PseudoResistance": rng.uniform(18.0, 22.0, n),
        "AluminaEstimate": rng.uniform(2.0, 4.0, n),
        "AcdEstimate": rng.uniform(4.0, 5.0, n),
        "Superheat": rng.uniform(5.0, 12.0, n),
        "TimeToAnodeEffect": rng.uniform(60.0, 3600.0, n),
        "AnodeEffect": np.full(n, k % 2 == 0),  # initial value is False
        "LineCurrent": rng.uniform(118.0, 122.0, 1),
        "LineVoltage": rng.uniform(500.0, 600.0, 1),
    }


# ---------------------------------------------------------------------- server process


async def serve(mode: str, port: int, publishes: int, stats_path: Path) -> None:
    """Child process: start the mirror, wait for GO on stdin, publish at 1 Hz."""
    import logging

    logging.disable(logging.WARNING)
    from plc_bridge.opcua_server import DEFAULT_QUANTITIES, MirrorServer

    t0 = time.perf_counter()
    layout = potline_layout()
    deadbands = {q.name: 0.0 for q in DEFAULT_QUANTITIES}
    mirror = MirrorServer(
        layout, port=port, scalar_period_s=0.0 if mode in ("naive", "scan") else None, deadbands=deadbands
    )
    await mirror.start()
    start_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    if mode == "scan":  # one publish with scalars, then idle
        await mirror.publish(snapshot(rng, 0, layout.n_cells), t=0.0)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # GO
    durations = []
    t_next = time.monotonic()
    for k in range(publishes):
        snap = snapshot(rng, k, layout.n_cells)
        t1 = time.perf_counter()
        report = await mirror.publish(snap, t=float(k))
        durations.append(time.perf_counter() - t1)
        if report.errors:
            print("ERRORS", report.errors[:3], flush=True)
        t_next += 1.0
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
    stats_path.write_text(json.dumps({"start_s": start_s, "publish_s": durations}))
    print("DONE", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # wait to be stopped
    await mirror.stop()


# ---------------------------------------------------------------------- client side


async def spawn(mode: str, port: int, publishes: int, stats: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_opcua", "--serve", mode, str(port), str(publishes), str(stats),
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert proc.stdout is not None
    while (line := await asyncio.wait_for(proc.stdout.readline(), 120)).strip() != b"READY":
        if not line:
            raise RuntimeError(f"server ({mode}) exited before READY")
    return proc


async def finish(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"STOP\n")
    await proc.stdin.drain()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def node_paths(layout, quantities, layout_kind: str) -> list[tuple[str, str]]:
    if layout_kind == "array":
        return [(f"{room}.{q.name}", f"Objects/Alro/{room}/{q.name}") for room in layout.room_names for q in quantities]
    return [
        (f"{layout.cell_name(k)}.{q.name}", f"Objects/Alro/{layout.cell_name(k)}/{q.name}")
        for k in range(layout.n_cells)
        for q in quantities
    ]


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p)) if values else float("nan")


async def bench_scan(n_scans: int, free_port) -> dict:
    from plc_bridge.opcua_client import NodeRef, OpcUaClient
    from plc_bridge.opcua_server import DEFAULT_QUANTITIES, NAMESPACE_URI

    layout = potline_layout()
    cell_q = [q for q in DEFAULT_QUANTITIES if q.level == "cell"]
    port = free_port()
    stats = Path(f"/tmp/bench_opcua_scan_{os.getpid()}.json")
    proc = await spawn("scan", port, 0, stats)
    out: dict = {}
    try:
        for kind in ("array", "per_cell"):
            refs = [NodeRef(n, p) for n, p in node_paths(layout, cell_q, "array" if kind == "array" else "naive")]
            t0 = time.perf_counter()
            client = OpcUaClient(f"opc.tcp://127.0.0.1:{port}/potline-twin/", refs, namespace=NAMESPACE_URI)
            await client.start(wait_s=30)
            connect_s = time.perf_counter() - t0
            times = []
            for _ in range(n_scans):
                t1 = time.perf_counter()
                samples = await client.read()
                times.append(time.perf_counter() - t1)
            assert all(s.good for s in samples.values()), "bad samples in scan"
            n_values = sum(np.size(s.value) for s in samples.values())
            await client.stop()
            out[kind] = {
                "nodes": len(refs),
                "values": int(n_values),
                "scans": n_scans,
                "scan_ms_p50": 1e3 * statistics.median(times),
                "scan_ms_max": 1e3 * max(times),
                "connect_and_resolve_s": connect_s,
            }
    finally:
        assert proc.stdin is not None
        proc.stdin.write(b"GO\n")
        await finish(proc)
        stats.unlink(missing_ok=True)
    out["speedup_p50"] = out["per_cell"]["scan_ms_p50"] / out["array"]["scan_ms_p50"]
    return out


async def bench_latency(kind: str, publishes: int, free_port) -> dict:
    from asyncua import Client, ua
    from asyncua.common.subscription import DataChangeEvent

    from plc_bridge.opcua_server import DEFAULT_QUANTITIES, NAMESPACE_URI

    layout = potline_layout()
    cell_q = [q for q in DEFAULT_QUANTITIES if q.level == "cell"]
    port = free_port()
    stats = Path(f"/tmp/bench_opcua_{kind}_{os.getpid()}.json")
    proc = await spawn(kind, port, publishes, stats)
    lat: list[float] = []
    received = 0
    try:
        async with Client(f"opc.tcp://127.0.0.1:{port}/potline-twin/", timeout=30, watchdog_intervall=5.0) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            ids = []
            for _name, path in node_paths(layout, cell_q, kind):
                ids.append(ua.NodeId(".".join(path.split("/")[1:]), idx))
            nodes = [client.get_node(i) for i in ids]
            sub = await client.create_subscription(PUBLISHING_INTERVAL_MS, None, queue_maxsize=0)
            t0 = time.perf_counter()
            for i in range(0, len(nodes), 1000):
                await sub.subscribe_data_change(nodes[i : i + 1000], queuesize=0)
            subscribe_s = time.perf_counter() - t0
            # drain the initial values
            while (ev := await sub.next_event(timeout=2.0)) is not None:
                pass
            assert proc.stdin is not None
            proc.stdin.write(b"GO\n")
            await proc.stdin.drain()
            expected = publishes * len(nodes)
            deadline = time.monotonic() + publishes + 20
            while received < expected and time.monotonic() < deadline:
                ev = await sub.next_event(timeout=5.0)
                if ev is None:
                    break
                if isinstance(ev, DataChangeEvent):
                    now = datetime.now(UTC)
                    ts = ev.data.monitored_item.Value.ServerTimestamp
                    received += 1
                    lat.append((now - ts).total_seconds())
            await sub.delete()
        assert proc.stdout is not None
        while (line := await asyncio.wait_for(proc.stdout.readline(), 60)).strip() != b"DONE":
            if not line:
                break
        server_stats = json.loads(stats.read_text()) if stats.exists() else {}
    finally:
        await finish(proc)
        stats.unlink(missing_ok=True)
    pub = server_stats.get("publish_s", [])
    return {
        "monitored_items": len(nodes),
        "publishing_interval_ms": PUBLISHING_INTERVAL_MS,
        "publishes": publishes,
        "notifications_expected": expected,
        "notifications_received": received,
        "values_received": received * (PER_ROOM if kind == "array" else 1),
        "subscribe_s": subscribe_s,
        "latency_ms_p50": 1e3 * pct(lat, 50),
        "latency_ms_p99": 1e3 * pct(lat, 99),
        "latency_ms_max": 1e3 * max(lat) if lat else float("nan"),
        "server_publish_ms_p50": 1e3 * pct(pub, 50),
        "server_publish_ms_max": 1e3 * max(pub) if pub else float("nan"),
        "server_start_s": server_stats.get("start_s"),
    }


async def run(quick: bool) -> dict:
    from plc_bridge.ports import free_port

    publishes = 6 if quick else 30
    scans = 5 if quick else 20
    result = {
        "benchmark": "opcua",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_1min": os.getloadavg()[0],
        },
        "cells": ROOMS * PER_ROOM,
        "quantities_per_cell": 7,
        "scan": await bench_scan(scans, free_port),
        "latency_1hz": {
            "array": await bench_latency("array", publishes, free_port),
            "naive": await bench_latency("naive", publishes, free_port),
        },
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer publishes and scans (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    parser.add_argument("--serve", nargs=4, metavar=("MODE", "PORT", "PUBLISHES", "STATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        mode, port, publishes, stats = args.serve
        asyncio.run(serve(mode, int(port), int(publishes), Path(stats)))
        return 0
    import logging

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    result = asyncio.run(run(args.quick))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s, la = result["scan"], result["latency_1hz"]
    print(f"scan 660 cells: arrays {s['array']['scan_ms_p50']:.1f} ms ({s['array']['nodes']} nodes) vs "
          f"per-cell {s['per_cell']['scan_ms_p50']:.1f} ms ({s['per_cell']['nodes']} nodes)")  # fmt: skip
    for kind in ("array", "naive"):
        r = la[kind]
        print(f"latency {kind:5s}: p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, "
              f"{r['notifications_received']}/{r['notifications_expected']} notifications, "
              f"server publish p50 {r['server_publish_ms_p50']:.1f} ms")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
