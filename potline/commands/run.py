"""``potline run --config plant.toml``: the headless daemon (see ``potline.daemon``).

Validates the config first: an invalid file is refused with every error listed
(exit status 2, nothing started). Then connects to the PLCs, runs the mirror and the
controller in the configured mode until SIGTERM/SIGINT (exit 0 after a graceful stop
that hands control back to the PLCs).

    potline run --config /etc/potline-twin/plant.toml
    potline run --config config/daemon_example.toml --mode shadow --log-format console

Start mode: ``daemon.mode`` (or ``--mode``). ``control`` needs the control interlock
(every PLC link up, journal writable) at start as at run time: until it clears the
daemon runs ``shadow`` and then enters ``control`` on its own, journalled. After an
unclean stop (``kill -9``, power loss) it starts in ``observe`` instead, and only an
operator's request (the mode file, ``SIGUSR1``, OPC UA ``SetMode``) takes it back to
``control`` (journalled as re-armed).

Runtime mode switches: OPC UA ``Twin/SetMode`` (operators), ``echo control > <state_dir>/mode``
(applied within ``mode_file_poll_s``; the file always shows the running mode, and every
write is a new request), ``kill -USR1`` (apply the mode file now), ``kill -USR2``
(observe now).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, type=Path, help="daemon TOML file")
    parser.add_argument(
        "--mode",
        choices=("observe", "shadow", "control"),
        default=None,
        help="start mode (overrides daemon.mode; control waits for the interlock, and after an unclean stop "
        "the daemon starts in observe until an operator re-arms)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=None,
        help="log format (default: logging.format of the config, auto = console on a terminal)",
    )
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None)


def main(args: argparse.Namespace) -> int:
    from potline.daemon_config import DaemonConfigError, load_daemon_config
    from potline.logging_setup import configure_logging

    try:
        loaded = load_daemon_config(args.config)
    except DaemonConfigError as exc:
        print(
            f"potline run: refusing to start: {args.config} is invalid ({len(exc.issues)} error(s)):", file=sys.stderr
        )
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    lc = loaded.config.logging
    configure_logging(args.log_format or lc.format, args.log_level or lc.level)
    if args.mode is not None:
        cfg = loaded.config
        loaded.config = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"mode": args.mode})})

    import asyncio

    from potline.daemon import Daemon

    if loaded.refining is not None:  # [refining]: scrap-refining pots instead of a potline
        from potline.refining_runtime import RefiningDaemon

        daemon: Daemon | RefiningDaemon = RefiningDaemon(loaded)
    else:
        daemon = Daemon(loaded)
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
