"""``potline config``: the reference configs shipped with the package.

An installed wheel carries the same files as the checkout's ``config/`` folder (the
reference plant, tag maps, scenarios, refining prototypes and an example recording, a
daemon example). This command
lists them, prints one, or copies them to a folder to edit::

    potline config list
    potline config show tagmaps/rectifier.toml
    potline config copy ./site-config        # then edit, and: potline check-config -c ./site-config/daemon_example.toml

``copy`` never overwrites an existing file unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="list the shipped configs (paths relative to the config folder)")
    show = sub.add_parser("show", help="print one shipped config")
    show.add_argument("name", help="path relative to the config folder, e.g. tagmaps/potroom.toml")
    copy = sub.add_parser("copy", help="copy every shipped config into a folder to edit")
    copy.add_argument("dest", type=Path, help="destination folder (created if missing)")
    copy.add_argument("--force", action="store_true", help="overwrite files that already exist")


def shipped_files() -> list[Path]:
    """Every shipped config and example file (TOML, recordings), relative to the config folder, sorted."""
    from twin.resources import config_dir

    root = config_dir()
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    )


def main(args: argparse.Namespace) -> int:
    from twin.resources import config_dir

    root = config_dir()
    if args.action == "list":
        print(f"# {root}")
        for rel in shipped_files():
            print(rel.as_posix())
        return 0
    if args.action == "show":
        rel = Path(args.name)
        if rel.is_absolute() or ".." in rel.parts or rel not in shipped_files():
            names = ", ".join(p.as_posix() for p in shipped_files())
            print(f"potline config show: name: expected one of {names}, got {args.name!r}", file=sys.stderr)
            return 2
        sys.stdout.write((root / rel).read_text(encoding="utf-8"))
        return 0
    dest: Path = args.dest
    existing = [rel for rel in shipped_files() if (dest / rel).exists()]
    if existing and not args.force:
        names = ", ".join(p.as_posix() for p in existing)
        print(f"potline config copy: {dest}: would overwrite {names} (use --force)", file=sys.stderr)
        return 1
    for rel in shipped_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest / rel)
    print(f"copied {len(shipped_files())} files to {dest}")
    return 0
