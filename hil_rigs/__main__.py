"""``python -m hil_rigs``: run a HIL rig in its own process.

    python -m hil_rigs serve --scenario ae_storm [--set scenario.duration_s=600] [--speed 50]
    python -m hil_rigs serve --scenario ae_storm --speed 1 --base-port 15020 --write-daemon-config runs/rig/daemon.toml
    python -m hil_rigs list

``serve`` starts the rig, then prints one line on stdout::

    HIL-RIG-READY {"control_port": 41234, "rectifiers": [...], "potrooms": [...], ...}

and serves a JSON-lines control channel on ``127.0.0.1:<control_port>`` (requests
``{"op": "status" | "inject" | "clear" | "report" | "stop", ...}``, one JSON answer per
line; see ``hil_rigs.process.RigProcess``). It stops on ``stop``, on SIGTERM/SIGINT, or
after ``--max-wall-s``; with ``--report PATH`` it writes the ``RigReport`` JSON there.
Logs go to stderr.

A rig a daemon can be pointed at: ``--base-port N`` serves the PLCs on fixed ports (the
rectifiers in line order from N, then the potrooms in room order; ``--control-port`` fixes
the control channel too), and ``--write-daemon-config PATH`` writes, before the READY line,
a complete daemon TOML for these PLCs (``potline check-config --config PATH``, then
``potline run --config PATH``). A port already taken is refused before the twin is built,
naming the port and the PLC (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

READY_PREFIX = "HIL-RIG-READY "


class UsageError(ValueError):
    """A command-line value the rig cannot use (exit status 2, one line on stderr)."""


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


def _check_free(host: str, port: int, what: str) -> None:
    """Refuse a fixed port another process listens on (before the twin is built)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"port {port} ({what}) on {host} is not free: {exc.strerror or exc}") from None


async def _listen_on_fixed_ports(rig: Any, ports: dict[str, int], host: str) -> None:
    """Put each PLC behind a link proxy on its fixed port (the rig's link faults act there)."""
    from hil_rigs.netem import LinkProxy

    for h in rig.plcs:
        try:
            h.proxy = await LinkProxy(host, h.edge.port, host, ports[h.device], name=h.device).start()
        except OSError as exc:
            raise UsageError(
                f"port {ports[h.device]} ({h.device}) on {host} is not free: {exc.strerror or exc}"
            ) from None


async def _serve(args: argparse.Namespace) -> int:
    from hil_rigs.process import fixed_ports, write_daemon_config
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
    ports: dict[str, int] | None = None
    if args.base_port is not None:
        try:
            ports = fixed_ports(scenario, args.base_port)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for device, port in ports.items():
            _check_free(args.host, port, device)
    _check_free(args.host, args.control_port, "control channel")

    from hil_rigs.rig import Rig

    rig = Rig(scenario, host=args.host, speed=args.speed, proxies=ports is None)
    await rig.start()
    try:
        if ports is not None:
            await _listen_on_fixed_ports(rig, ports, args.host)
        info = rig.endpoints()
        if args.write_daemon_config:
            info["daemon_config"] = str(write_daemon_config(args.write_daemon_config, info, scenario,
                                                            opcua_port=args.daemon_opcua_port,
                                                            metrics_port=args.daemon_metrics_port))  # fmt: skip
    except BaseException:
        await rig.stop()
        raise
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

    try:
        server = await asyncio.start_server(handle, args.host, args.control_port)
    except OSError as exc:
        await rig.stop()
        raise UsageError(f"port {args.control_port} (control channel) on {args.host} is not free: "
                         f"{exc.strerror or exc}") from None  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    info = {"control_port": port, "pid": os.getpid(), **info}
    sys.stdout.write(READY_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()
    _describe(info)
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


def _describe(info: dict[str, Any]) -> None:
    """Where everything listens, for a person at a terminal (stderr: stdout carries READY)."""
    out = [f"hil_rigs: scenario {info['scenario']} at {info['speed']:g}x, control channel port {info['control_port']}"]
    for ep in info["rectifiers"] + info["potrooms"]:
        out.append(f"  {ep['device']:<24} {ep['protocol']:<6} {ep['host']}:{ep['port']}")
    if "daemon_config" in info:
        path = info["daemon_config"]
        out.append(f"  daemon config: {path}  (potline check-config --config {path}; potline run --config {path})")
    print("\n".join(out), file=sys.stderr, flush=True)


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
    s.add_argument("--base-port", type=int, default=None, metavar="N",
                   help="fixed PLC ports: the rectifiers in line order from N, then the potrooms in room order "
                        "(default: free ports, new on every run)")  # fmt: skip
    s.add_argument("--control-port", type=int, default=0, metavar="PORT",
                   help="port of the JSON-lines control channel (default: a free one)")  # fmt: skip
    s.add_argument("--write-daemon-config", default=None, metavar="PATH",
                   help="write a daemon TOML pointing at this rig's PLCs (for potline check-config / run)")  # fmt: skip
    s.add_argument("--daemon-opcua-port", type=int, default=14841, metavar="PORT",
                   help="the written daemon's OPC UA mirror port (default 14841)")  # fmt: skip
    s.add_argument("--daemon-metrics-port", type=int, default=19108, metavar="PORT",
                   help="the written daemon's metrics port (default 19108)")  # fmt: skip
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
    from twin.config import ConfigError

    try:
        return asyncio.run(_serve(args))
    except (UsageError, ConfigError) as exc:
        print(f"python -m hil_rigs serve: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
