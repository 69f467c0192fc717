"""``python -m hil_rigs``: run a HIL rig in its own process.

    python -m hil_rigs serve --scenario ae_storm [--set scenario.duration_s=600] [--speed 50]
    python -m hil_rigs list

``serve`` starts the rig, then prints one line on stdout::

    HIL-RIG-READY {"control_port": 41234, "rectifiers": [...], "potrooms": [...], ...}

and serves a JSON-lines control channel on ``127.0.0.1:<control_port>`` (requests
``{"op": "status" | "inject" | "clear" | "report" | "stop", ...}``, one JSON answer per
line; see ``hil_rigs.process.RigProcess``). It stops on ``stop``, on SIGTERM/SIGINT, or
after ``--max-wall-s``; with ``--report PATH`` it writes the ``RigReport`` JSON there.
Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

READY_PREFIX = "HIL-RIG-READY "


def _configure_logging(level: str) -> None:
    import structlog

    lvl = getattr(logging, level.upper(), logging.WARNING)
    logging.basicConfig(stream=sys.stderr, level=max(lvl, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.ERROR)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )  # fmt: skip


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def _serve(args: argparse.Namespace) -> int:
    from hil_rigs.rig import Rig
    from hil_rigs.scenarios import load_scenario, scenario_from_dict

    if args.scenario_json:
        data = json.loads(Path(args.scenario_json).read_text(encoding="utf-8"))
        scenario = scenario_from_dict(data, source=args.scenario_json)
    else:
        overrides = {}
        for item in args.set or []:
            key, _, value = item.partition("=")
            overrides[key.strip()] = _parse_value(value.strip())
        scenario = load_scenario(args.scenario, **overrides)
    rig = Rig(scenario, host=args.host, speed=args.speed)
    await rig.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not reader.at_eof():
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = json.loads(line)
                    answer = await _dispatch(rig, req, stop)
                except Exception as exc:
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write((json.dumps(answer) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, args.host, 0)
    port = server.sockets[0].getsockname()[1]
    info = {"control_port": port, "pid": os.getpid(), **rig.endpoints()}
    sys.stdout.write(READY_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()
    deadline = time.monotonic() + args.max_wall_s if args.max_wall_s else None
    while not stop.is_set():
        if deadline is not None and time.monotonic() > deadline:
            print("hil_rigs: --max-wall-s reached, stopping", file=sys.stderr)
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    await asyncio.sleep(0.05)  # let a pending "stop" answer go out
    server.close()
    await rig.stop()
    report = rig.report()
    if args.report:
        report.write_json(args.report)
    return 0


async def _dispatch(rig: Any, req: dict[str, Any], stop: asyncio.Event) -> dict[str, Any]:
    op = req.get("op")
    if op == "status":
        return {"ok": True, "plant_s": rig.now(), "summary": rig.report().summary()}
    if op == "inject":
        await rig.inject(req["fault"])
        return {"ok": True, "plant_s": rig.now()}
    if op == "clear":
        await rig.clear(req["fault"])
        return {"ok": True, "plant_s": rig.now()}
    if op == "report":
        return {"ok": True, "report": rig.report().to_dict()}
    if op == "stop":
        stop.set()
        return {"ok": True, "plant_s": rig.now()}
    return {"ok": False, "error": f"unknown op {op!r}; expected status, inject, clear, report or stop"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil_rigs", description="HIL rigs: simulated PLCs serving the twin")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a rig for a scenario")
    s.add_argument("--scenario", default="ae_storm", help="scenario name (config/scenarios) or TOML path")
    s.add_argument("--scenario-json", default=None, help="a scenario as JSON (as written by RigProcess)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scenario key (dotted)")
    s.add_argument("--speed", type=float, default=None, help="time factor (default: the scenario's)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--report", default=None, help="write the rig report JSON here on exit")
    s.add_argument("--max-wall-s", type=float, default=None, help="stop after this many wall seconds")
    s.add_argument("--log-level", default="warning")
    sub.add_parser("list", help="list the shipped scenarios")
    args = parser.parse_args(argv)
    if args.command == "list":
        from hil_rigs.scenarios import list_scenarios, load_scenario

        for name in list_scenarios():
            print(f"{name:24s} {load_scenario(name).scenario.description}")
        return 0
    _configure_logging(args.log_level)
    try:
        return asyncio.run(_serve(args))
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
