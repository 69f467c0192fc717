"""``potline`` command line: one entry point, one module per subcommand.

Each subcommand lives in ``potline/commands/<name>.py`` and provides
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only when
their subcommand runs, so ``potline check-config`` does not pay for Numba or asyncua.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand name -> (module under potline.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("sim", "run the plant offline on the twin and write a summary and plots"),
    "demo": ("demo", "start a HIL rig and the controller against it; write a report"),
    "run": ("run", "headless daemon: mirror, observe, shadow or control live PLCs"),
    "check-config": ("check_config", "validate a config file and list every error"),
    "events": ("events", "query the event journal"),
    "report": ("report", "shift and daily reports per potroom (HTML + CSV) from the journal and history"),
    "tags": ("tags", "tag maps: export as CSV/JSON, validate"),
    "config": ("config", "the shipped reference configs: list, show, copy to edit"),
    "shadow": ("shadow", "shadow-test a refining pot against recorded data"),
    "campaign": ("campaign", "run many refining cycles in parallel (local or Dask)"),
    "calibrate": ("calibrate", "fit a refining pot's parameters to a recording; write a calibrated config"),
    "plan": ("plan", "plan line current and heat-exchanger duty for a price day or a grid request"),
    "hash-password": ("hash_password", "print the scrypt hash of a new operator password (asks, or reads stdin)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="potline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        mod = _load(module, required=False)
        if mod is not None:
            mod.add_arguments(p)
    return parser


def _load(module: str, required: bool = True):
    try:
        return importlib.import_module(f"potline.commands.{module}")
    except ModuleNotFoundError as exc:
        if required or exc.name != f"potline.commands.{module}":
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mod = _load(args._module, required=False)
    if mod is None:
        print(f"potline {args.command}: not available in this build", file=sys.stderr)
        return 2
    return int(mod.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
