"""``potline events``: query the daemon's event journal (read-only, safe while it runs).

    potline events --journal /var/lib/potline-twin/journal.db
    potline events --config plant.toml --category ae --since 2h
    potline events --journal j.db --kind mode_change --json
    potline events --journal j.db --room Potroom2 --cell 17 --limit 50 --newest
    potline events --journal j.db --summary
    potline events --journal j.db --with-archives --category ae --since 365d
    potline events --journal j.db --with-archives --verify [--key-file /etc/potline-twin/journal.key]

Times: ``--since``/``--until`` take ISO-8601 (``2026-11-23T10:00``, UTC when no zone)
or a relative age (``90s``, ``15m``, ``2h``, ``3d``). Output: one aligned line per event,
or one JSON object per line with ``--json`` (for scripts and log shippers).
``--with-archives`` reads the files the daemon rotated out (``journal.rotate_mb``:
``<stem>-<first id>-<last id>-<time><suffix>`` beside the journal) before the live one, as
one journal: ids continue from file to file.

``--since``/``--until`` compare each entry's order time (its wall time made non-decreasing:
after the wall clock jumped back, entries keep their real ``ts_utc`` but are found where
they were written); a line shows ``[order time ...]`` when the two differ by over a second.

``--verify`` checks the hash chain (``potline.journal``: every row linked to the one before,
the head records, the append-only triggers; with ``--with-archives`` also the links between
the files; ``--anchor ID:HASH``: a head hash kept elsewhere, e.g. the daemon's log) and
prints the first broken link and every other finding; exit status 0 when the journal is
intact, 1 when not (or it cannot be checked, e.g. a keyed chain without ``--key-file``),
2 for a bad argument. ``--summary`` includes the same check.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from potline.journal import Event, Journal

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--journal", "-j", type=Path, help="journal SQLite file")
    src.add_argument("--config", "-c", type=Path, help="daemon config (uses its journal path)")
    parser.add_argument("--kind", action="append", default=[], help="event kind (repeatable), e.g. ae_start")
    parser.add_argument(
        "--category",
        action="append",
        default=[],
        help="ae | setpoint | mode | alarm | comms | control | daemon (repeatable)",
    )
    parser.add_argument("--since", help="ISO time or age (90s, 15m, 2h, 3d)")
    parser.add_argument("--until", help="ISO time or age")
    parser.add_argument("--room", help="room name")
    parser.add_argument("--cell", type=int, help="cell floor number (with --room)")
    parser.add_argument("--after-id", type=int, help="only events with a larger id (follow-up queries)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many events")
    parser.add_argument("--newest", action="store_true", help="newest first")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--summary", action="store_true", help="counts per category and kind, id range, integrity")
    parser.add_argument("--verify", action="store_true",
                        help="check the hash chain, head records and triggers; exit 1 on a broken link")  # fmt: skip
    parser.add_argument("--key-file", type=Path, help="HMAC key of a keyed journal (for --verify/--summary)")
    parser.add_argument("--anchor", action="append", default=[], metavar="ID:HASH",
                        help="with --verify: a row's hash kept elsewhere (the daemon log's journal head); repeatable")  # fmt: skip
    parser.add_argument(
        "--with-archives",
        action="store_true",
        help="also the rotated-out files beside the journal (oldest first), as one journal",
    )


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO-8601 (naive = UTC) or a relative age like ``15m`` before ``now``."""
    now = now or datetime.now(UTC)
    m = _REL.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an ISO-8601 time or an age like 90s/15m/2h/3d, got {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def journal_files(path: Path, with_archives: bool) -> list[Path]:
    """The journal at ``path``, preceded by its rotated-out archives in id order when asked."""
    if not with_archives:
        return [path]
    pat = re.compile(re.escape(path.stem) + r"-(\d+)-(\d+)-[0-9TZ]+" + re.escape(path.suffix) + "$")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}-*{path.suffix}") if (m := pat.match(p.name))]
    return [p for _, p in sorted(found)] + [path]


def main(args: argparse.Namespace) -> int:
    from potline.journal import CATEGORIES, Journal, JournalError, load_key

    path = args.journal
    if path is None:
        from potline.daemon_config import DaemonConfigError, load_daemon_config

        try:
            path = load_daemon_config(args.config).journal_path
        except DaemonConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
    bad = [c for c in args.category if c not in CATEGORIES]
    if bad:
        print(f"potline events: --category expects one of {', '.join(CATEGORIES)}, got {', '.join(bad)}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"potline events: {exc}", file=sys.stderr)
        return 2
    files = journal_files(path, args.with_archives)
    key = None
    try:
        if args.key_file is not None:
            key = load_key(args.key_file, strict=False)
        if args.verify:
            anchors = [_anchor(a) for a in args.anchor]
            return _verify(files, key, args.json, anchors)
        journals = [Journal(f, readonly=True) for f in files]
    except JournalError as exc:
        print(f"potline events: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"potline events: {exc}", file=sys.stderr)
        return 2
    try:
        if args.summary:
            return _summary(journals, files, key, args.json)
        events: list[Event] = []
        for j in reversed(journals) if args.newest else journals:
            if args.limit is not None and len(events) >= args.limit:
                break
            left = None if args.limit is None else args.limit - len(events)
            events += j.query(kinds=args.kind or None, categories=args.category or None, since=since, until=until,
                              room=args.room, cell=args.cell, after_id=args.after_id, limit=left,
                              newest_first=args.newest)  # fmt: skip
    finally:
        for j in journals:
            j.close()
    out = sys.stdout
    try:
        for e in events:
            if args.json:
                out.write(json.dumps(e.as_dict(), ensure_ascii=False) + "\n")
            else:
                out.write(_line(e) + "\n")
    except BrokenPipeError:  # `potline events | head`
        return 0
    return 0


def _line(e: Event) -> str:
    where = "/".join(str(x) for x in (e.line or e.room, f"Cell{e.cell:03d}" if e.cell is not None else None) if x)
    what = e.detail
    if e.tag:
        what = f"{e.tag}={e.value:g} {what}".strip() if e.value is not None else f"{e.tag} {what}".strip()
    extra = []
    if e.mode:
        extra.append(f"mode={e.mode}")
    if e.user:
        extra.append(f"user={e.user}")
    if e.source:
        extra.append(f"src={e.source}")
    if e.ts_order and e.ts_order[:19] != e.ts_utc[:19] and _apart(e.ts_order, e.ts_utc, 1.0):
        extra.append(f"[order time {e.ts_order[:23]}]")
    return (
        f"{e.id:>7} {e.ts_utc[:23]} {e.category:<8} {e.kind:<16} {where or '-':<20} {what} {' '.join(extra)}".rstrip()
    )


def _apart(a: str, b: str, seconds: float) -> bool:
    """Are ISO times ``a`` and ``b`` more than ``seconds`` apart (False when unreadable)?"""
    try:
        ta, tb = (datetime.fromisoformat(x.replace("Z", "+00:00")) for x in (a, b))
    except ValueError:
        return False
    return abs((ta - tb).total_seconds()) > seconds


def _anchor(text: str) -> tuple[int, str]:
    """``ID:HASH`` -> (id, hash)."""
    m = re.fullmatch(r"\s*(\d+)\s*[:=]\s*([0-9a-fA-F]{64})\s*", text)
    if m is None:
        raise ValueError(f"--anchor expects ID:HASH (a row id and its 64 hex digit hash), got {text!r}")
    return int(m.group(1)), m.group(2).lower()


def _verify(files: list[Path], key: bytes | None, as_json: bool, anchors: list[tuple[int, str]]) -> int:
    """``--verify``: the chain over ``files`` (archives first), every finding; 0 intact, 1 not."""
    from potline.journal import verify_files

    reports = verify_files(files, key, anchors)
    ok = all(r.ok for r in reports)
    if as_json:
        print(json.dumps({"ok": ok, "files": [r.as_dict() for r in reports]}, indent=1))
        return 0 if ok else 1
    for r in reports:
        ids = f"ids {r.first_id}..{r.last_id}" if r.rows else "no entries"
        chain = "HMAC-SHA-256" if r.keyed else "SHA-256"
        print(f"{r.path}: {r.rows} entries, {ids}, {chain} chain from id {r.hashed_from} ({r.genesis_from}): "
              f"{'intact' if r.ok else 'NOT INTACT'}")  # fmt: skip
        fatal = [f for f in r.findings if f.fatal]
        if fatal:
            f = fatal[0]
            print(f"  first broken link{f' at id {f.id}' if f.id is not None else ''}: {f.what}")
        for f in r.findings:
            if f is not (fatal[0] if fatal else None):
                print(f"  {'BROKEN' if f.fatal else 'note'}: {f.what}")
    print("journal intact" if ok else "journal NOT intact", file=sys.stdout)
    return 0 if ok else 1


def _summary(journals: list[Journal], files: list[Path], key: bytes | None, as_json: bool) -> int:
    """Counts per category and kind, id range and gaps, integrity and the hash chain, over
    ``journals`` as one; exit 1 when the chain is not intact."""
    from potline.journal import verify_files

    merged: dict[tuple[str, str], list[Any]] = {}
    ids: list[int] = []
    for j in journals:
        for c, k, n, a, b in j.kind_stats():
            m = merged.setdefault((c, k), [0, a, b])
            m[0] += n
            m[1], m[2] = min(m[1], a), max(m[2], b)
        ids += j.ids()
    gaps = sum(1 for a, b in itertools.pairwise(ids) if b != a + 1)
    checks = [j.integrity_check() for j in journals]
    reports = verify_files(files, key)
    broken = [f for r in reports for f in r.findings if f.fatal]
    chain = "intact" if not broken else f"NOT intact: {broken[0].what}"
    by_kind = [
        {"category": c, "kind": k, "count": n, "first": a, "last": b} for (c, k), (n, a, b) in sorted(merged.items())
    ]
    doc: dict[str, Any] = {
        "files": [str(j.path) for j in journals],
        "events": len(ids),
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
        "id_gaps": gaps,
        "integrity": "ok" if all(c == "ok" for c in checks) else "; ".join(checks),
        "chain": chain,
        "chain_findings": [f.what for r in reports for f in r.findings],
        "schema_version": max(j.schema_version for j in journals),
        "by_kind": by_kind,
    }
    if as_json:
        print(json.dumps(doc, indent=1))
    else:
        print(
            f"{doc['events']} events, ids {doc['first_id']}..{doc['last_id']}, {gaps} gap(s), "
            f"integrity {doc['integrity']}, schema v{doc['schema_version']}, chain {chain}"
        )
        for r in by_kind:
            print(f"  {r['category']:<8} {r['kind']:<18} {r['count']:>8}  {r['first'][:19]} .. {r['last'][:19]}")
    return 0 if not broken else 1
