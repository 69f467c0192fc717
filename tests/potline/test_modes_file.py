"""The mode file on real files: every write is a request (also the same word again),
the running mode is written back, an operator's newer write is never overwritten, and
a file the daemon does not trust is refused and left alone.
"""

from __future__ import annotations

import os

import pytest

from potline.mode_file import ModeFile


def _write(p, text: str, mode: int = 0o600) -> None:
    p.write_text(text)
    os.chmod(p, mode)


def test_writing_the_same_word_again_is_a_new_request(tmp_path) -> None:
    p = tmp_path / "mode"
    mf = ModeFile(p)
    _write(p, "control\n")
    r = mf.poll()
    assert r is not None and r.text == "control" and r.problem == ""
    assert mf.poll() is None  # nothing new
    # the daemon refused it and wrote the running mode back; the operator asks again
    assert mf.write_back("observe") == ""
    assert p.read_text() == "observe\n" and mf.poll() is None
    _write(p, "control\n")
    again = mf.poll()
    assert again is not None and again.text == "control"
    # even the very same bytes over the same bytes count (a deliberate write)
    _write(p, "control\n")
    os.utime(p, ns=(1, 1))
    assert mf.poll() is not None


def test_the_running_mode_is_written_back_atomically_with_safe_permissions(tmp_path) -> None:
    p = tmp_path / "state" / "mode"  # the directory does not exist yet
    mf = ModeFile(p)
    assert mf.take().missing
    assert mf.write_back("shadow") == ""
    assert p.read_text() == "shadow\n" and (p.stat().st_mode & 0o777) == 0o644
    _write(p, "control\n", 0o600)
    assert mf.take().text == "control"
    assert mf.write_back("observe") == ""
    assert p.read_text() == "observe\n" and (p.stat().st_mode & 0o777) == 0o600  # its permissions kept
    assert [x.name for x in p.parent.iterdir()] == ["mode"]  # no temporary left behind


def test_an_operators_newer_write_is_never_overwritten(tmp_path) -> None:
    p = tmp_path / "mode"
    mf = ModeFile(p)
    _write(p, "observe\n")
    mf.take()
    _write(p, "control\n")  # written after the daemon's last look
    os.utime(p, ns=(2, 2))
    why = mf.write_back("shadow")
    assert "written meanwhile" in why and p.read_text() == "control\n"
    r = mf.poll()
    assert r is not None and r.text == "control"


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda p: _write(p, "control\n", 0o666), "writable by group/others"),
        (lambda p: _write(p, "x" * 5000), "5000 bytes"),
        (lambda p: p.mkdir(), "expected a regular file"),
        (lambda p: _write(p, "contr\xf6l\n"), "unreadable"),
    ],
)
def test_a_file_it_does_not_trust_is_refused_and_left_alone(tmp_path, setup, problem: str) -> None:
    p = tmp_path / "mode"
    setup(p)
    before = (p.stat().st_mode, p.is_file() and p.read_bytes())
    mf = ModeFile(p)
    r = mf.poll()
    assert r is not None and r.text is None and problem in r.problem and str(p) in r.problem
    assert problem in mf.write_back("observe")
    assert (p.stat().st_mode, p.is_file() and p.read_bytes()) == before


def test_word_is_normalised_and_owner_named(tmp_path) -> None:
    p = tmp_path / "mode"
    _write(p, "  Shadow \n")
    r = ModeFile(p).poll()
    assert r is not None and r.text == "shadow" and r.owner is not None
