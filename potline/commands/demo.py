"""``potline demo``: start a HIL rig and the controller against it; write a report.

Embedded defaults: the AE-storm scenario on one potroom of 132 cells, 1.5 plant hours
at 50x (about two minutes), rectifier PLC over Modbus TCP, potroom PLC over OPC UA.
The report (``report.html`` + PNG figures + ``report.json``), the session's journal and
history (``journal.sqlite``, ``history.sqlite``: ``potline report`` reads them) go to
``--out``. The web HMI is served while the demo runs (its URL is printed; ``--hmi-port``,
``--no-hmi``). Exit status 1 when a verdict failed (every AE detected in time, every AE
quenched, no exception); overruns and the quench latency are reported, not judged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", default="ae_storm", help="scenario name in config/scenarios or a TOML path (default: %(default)s)"
    )
    parser.add_argument("--hours", type=float, default=1.5, help="plant hours to simulate (default: %(default)s)")
    parser.add_argument(
        "--speed", type=float, default=50.0, help="plant seconds per wall second (default: %(default)s)"
    )
    parser.add_argument("--cells", type=int, default=None, help="cells per potroom (default: the scenario's, 132)")
    parser.add_argument("--rooms", type=int, default=None, help="potrooms, one PLC each (default: the scenario's, 1)")
    parser.add_argument("--scan", type=float, default=None, help="controller scan [plant s] (default: the scenario's)")
    parser.add_argument(
        "--potroom-protocol",
        choices=("opcua", "modbus"),
        default=None,
        help="protocol of the potroom PLCs (default: the scenario's, opcua)",
    )
    parser.add_argument("--out", default="out/demo", help="report directory (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress display")
    parser.add_argument("--hmi-port", type=int, default=None,
                        help="port of the web HMI served during the run (0: a free one; default: 8080, "
                             "or a free one when 8080 is taken)")  # fmt: skip
    parser.add_argument("--hmi-host", default="127.0.0.1", help="interface of the web HMI (default: %(default)s)")
    parser.add_argument("--no-hmi", action="store_true", help="do not serve the web HMI")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    import structlog
    from rich.console import Console

    from potline.demo import DemoOptions, run_demo, write_demo_report
    from twin.config import ConfigError

    # the demo talks to people: library chatter below warnings stays quiet
    logging.basicConfig(level=logging.ERROR)
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    console = Console()
    if args.hours <= 0 or args.speed <= 0:
        print("potline demo: --hours and --speed must be > 0", file=sys.stderr)
        return 2
    opts = DemoOptions(scenario=args.scenario, hours=args.hours, speed=args.speed, cells=args.cells, rooms=args.rooms,
                       scan_s=args.scan, potroom_protocol=args.potroom_protocol, out=Path(args.out),
                       progress=not args.no_progress, hmi=not args.no_hmi, hmi_host=args.hmi_host,
                       hmi_port=8080 if args.hmi_port is None else args.hmi_port,
                       hmi_port_fallback=args.hmi_port is None)  # fmt: skip
    try:
        res = asyncio.run(run_demo(opts, console))
    except ConfigError as exc:
        print(f"potline demo: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if opts.hmi and getattr(exc, "errno", None) in (98, 13):
            print(f"potline demo: cannot serve the HMI on {args.hmi_host}:{args.hmi_port}: {exc.strerror} "
                  "(choose another --hmi-port, 0 for any free one, or --no-hmi)", file=sys.stderr)  # fmt: skip
            return 2
        raise
    except KeyboardInterrupt:
        print("potline demo: interrupted", file=sys.stderr)
        return 130
    html = write_demo_report(res, opts.out)
    ok = all(v[0] for v in res.checks.values())
    for name, (passed, why) in res.checks.items():
        mark = "[green]yes[/green]" if passed else "[red]NO[/red]"
        console.print(f"  {name}: {mark}" + (f" — {why}" if why else ""))
    for name, (status, why) in res.notes.items():
        mark = "[green]ok[/green]" if status == "ok" else "[yellow]warn[/yellow]"
        console.print(f"  {name}: {mark} — {why}")
    s = res.rig.summary()
    console.print(
        f"  {s['aes_under_controller']} AEs under the controller, {len(res.detected)} detected, "
        f"{s['aes_quench_commanded']} quench-commanded; wall {res.wall_s:.0f} s"
    )
    if res.journal is not None:
        console.print(f"  journal: {res.journal}  history: {res.history}  (potline report --journal ... --history ...)")
    console.print(f"[bold]Report:[/bold] {html.resolve()}")
    return 0 if ok else 1
