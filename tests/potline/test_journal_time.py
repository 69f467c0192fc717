"""Journal time when the wall clock jumps (issue 15: after a backwards jump 37 of 354 events
were invisible to ``--since``). Real SQLite files; the writer's wall and monotonic clocks
are injected so the jump is exact.

What a user cares about: ``--since T`` returns every entry written after the first entry
at or after T (a suffix of the journal), ``--until T`` a prefix; each entry keeps the wall
time it really read (``ts_utc``) next to its monotonic time and the order time queries use.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from potline.journal import Journal

PY = sys.executable
T0 = datetime(2026, 6, 1, 10, 0, 0, tzinfo=UTC)


class JumpyClock:
    """Wall clock (epoch s) that can be stepped, beside a steady monotonic clock."""

    def __init__(self) -> None:
        self.wall_s = T0.timestamp()
        self.mono_s = 5000.0

    def tick(self, dt: float = 1.0) -> None:
        self.wall_s += dt
        self.mono_s += dt

    def wall(self) -> float:
        return self.wall_s

    def mono(self) -> float:
        return self.mono_s


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write(j: Journal, clk: JumpyClock, n: int, start: int) -> None:
    for k in range(start, start + n):
        clk.tick()
        j.append(kind="setpoint_write", tag="line_current_sp", value=float(k), detail=f"k={k}")
    j.commit()


def test_a_backwards_wall_clock_jump_hides_no_entry_from_since(tmp_path) -> None:
    """50 entries, the wall clock steps back an hour, 50 more: ``since`` any time up to
    the last entry before the jump returns everything after it, the post-jump entries keep
    their (earlier) wall times in ``ts_utc`` and order after the pre-jump ones; every
    time window is a contiguous id range; the CLI agrees."""
    path = tmp_path / "journal.db"
    clk = JumpyClock()
    j = Journal(path, wall=clk.wall, mono=clk.mono)
    write(j, clk, 50, 1)
    clk.wall_s -= 3600.0  # NTP steps the clock back an hour
    write(j, clk, 50, 51)
    evs = j.query()
    assert [e.value for e in evs] == [float(k) for k in range(1, 101)]
    assert evs[50].ts_utc == iso(T0 + timedelta(seconds=51 - 3600))  # the wall time it read, kept
    assert evs[50].ts_order > evs[49].ts_order  # ... and found after entry 50
    assert all(a.ts_order <= b.ts_order for a, b in itertools.pairwise(evs))
    assert evs[99].t_mono_s - evs[0].t_mono_s == 99.0
    since = T0 + timedelta(seconds=30)
    got = j.query(since=since)
    assert [e.value for e in got] == [float(k) for k in range(30, 101)]  # 50 post-jump entries included
    raw = [e for e in evs if e.ts_utc >= iso(since)]
    assert len(raw) == 21, "by raw wall time the post-jump entries would have been invisible"
    assert [e.value for e in j.query(until=since)] == [float(k) for k in range(1, 30)]
    rnd = random.Random(15)
    for _ in range(50):  # any window is an id range
        a, b = sorted(rnd.uniform(-4000, 200) for _ in range(2))
        ids = [e.id for e in j.query(since=T0 + timedelta(seconds=a), until=T0 + timedelta(seconds=b))]
        assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True
    j.close()
    out = subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), "--json", "--since", iso(since)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == 71 and {"ts_utc", "ts_order", "t_mono_s", "hash"} <= set(rows[-1])
    text = subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), "--since", iso(since)],
                          capture_output=True, text=True, timeout=120).stdout.splitlines()  # fmt: skip
    assert "[order time" in text[-1] and "[order time" not in text[0]


def test_a_restart_while_the_clock_is_still_behind_keeps_order(tmp_path) -> None:
    """The daemon restarts while the wall clock is still an hour behind the journal's
    newest order time: the new run's entries order after the old ones (the monotonic clock
    of the old run is meaningless to the new one, so they wait at the newest order time
    until the wall clock passes it); a forward jump is followed as it is."""
    path = tmp_path / "journal.db"
    clk = JumpyClock()
    with Journal(path, wall=clk.wall, mono=clk.mono) as j:
        write(j, clk, 10, 1)
    last = T0 + timedelta(seconds=10)
    clk.wall_s -= 3600.0
    clk.mono_s = 10.0  # another process
    with Journal(path, wall=clk.wall, mono=clk.mono) as j:
        write(j, clk, 5, 11)
        evs = j.query()
        assert all(e.ts_order >= iso(last) for e in evs[10:])
        assert [e.value for e in j.query(since=last)] == [float(k) for k in range(10, 16)]
        clk.wall_s += 7200.0  # the clock is put right (an hour ahead of the old entries)
        write(j, clk, 1, 16)
        newest = j.last()
        assert newest is not None and newest.ts_order == newest.ts_utc  # follows the wall clock again


def test_small_backwards_wobble_keeps_order_and_wall_time(tmp_path) -> None:
    """A wall clock that steps back by less than a second (slewing, a VM) keeps order
    times non-decreasing and within that second of the wall clock."""
    path = tmp_path / "journal.db"
    clk = JumpyClock()
    with Journal(path, wall=clk.wall, mono=clk.mono) as j:
        for k in range(20):
            clk.tick(0.1)
            clk.wall_s -= 0.15 if k % 2 else 0.0
            j.append(kind="ae_start", cell=k)
        j.commit()
        evs = j.query()
    orders = [e.ts_order for e in evs]
    assert orders == sorted(orders)
    for e in evs:
        gap = datetime.fromisoformat(e.ts_order.replace("Z", "+00:00")) - datetime.fromisoformat(
            e.ts_utc.replace("Z", "+00:00"))  # fmt: skip
        assert timedelta(0) <= gap <= timedelta(seconds=1)
