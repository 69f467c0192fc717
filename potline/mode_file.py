"""The mode file: an operator's way to ask for a mode, and where the running mode is shown.

``<state_dir>/mode`` holds one word (``observe``, ``shadow`` or ``control``). The
daemon polls it (``daemon.mode_file_poll_s``) and applies it on ``SIGUSR1``:

* any write to the file is a request, also one that writes the word it already held
  (a change is judged by the file's identity, inode + change time + content, not by
  its content alone), so writing ``control`` again after a refusal is acted upon;
* the daemon writes the **running** mode back into the file at start, after every mode
  change (from any source) and after every refused request it could read, so the file
  and the running mode never disagree without a journal entry saying why;
* it never writes over a file it does not trust (not a regular file, writable by
  group/others, not owned by the service user or root, larger than a word): those are
  refused and journalled, and left as they are;
* it does not write over an operator's newer write: the write-back happens only when
  the file is still the one it last read.

Only the service user or root may own the file (the owner is journalled as the user).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModeFile", "ModeFileRead", "file_owner"]

#: longest content accepted [bytes]
MAX_BYTES = 64
#: permissions of a mode file the daemon creates (an existing file keeps its own, minus group/other write)
NEW_FILE_MODE = 0o644

Key = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class ModeFileRead:
    """One look at the mode file.

    Attributes:
        text: its word, stripped and lower-cased (None: absent or not usable).
        problem: why it cannot be used ('' = usable or absent).
        key: identity of what was seen (a write, chmod or replacement changes it).
        owner: the owning user's name (None when unknown).
    """

    text: str | None
    problem: str
    key: Key
    owner: str | None = None

    @property
    def missing(self) -> bool:
        return self.text is None and not self.problem


def file_owner(uid: int) -> str | None:
    """User name of ``uid`` (None when the system does not know it)."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return None


class ModeFile:
    """Reads the mode file, tells new writes from ones already seen, writes the running mode back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: Key | None = None

    def read(self) -> ModeFileRead:
        """The file's word, or why it cannot be used."""
        p = self.path
        try:
            st = p.lstat()
        except FileNotFoundError:
            return ModeFileRead(None, "", ("missing",))
        except OSError as exc:
            why = f"mode file {p}: {exc.strerror or exc}"
            return ModeFileRead(None, why, ("!", why))
        ident: Key = (st.st_ino, st.st_dev, st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)
        why = ""
        if not stat.S_ISREG(st.st_mode):
            why = f"mode file {p}: expected a regular file"
        elif st.st_mode & 0o022:
            why = (f"mode file {p}: writable by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
                   "expected 0600 or 0644")  # fmt: skip
        elif st.st_uid not in (os.geteuid(), 0):
            why = f"mode file {p}: owned by uid {st.st_uid}, expected the service user or root"
        elif st.st_size > MAX_BYTES:
            why = f"mode file {p}: {st.st_size} bytes, expected one word (observe|shadow|control)"
        if why:
            return ModeFileRead(None, why, ("!", why, *ident))
        try:
            text = p.read_bytes()[:MAX_BYTES].decode("ascii").strip().lower()
        except (OSError, UnicodeDecodeError) as exc:
            why = f"mode file {p}: unreadable ({exc})"
            return ModeFileRead(None, why, ("!", why, *ident))
        return ModeFileRead(text, "", (*ident, text), file_owner(st.st_uid))

    def take(self) -> ModeFileRead:
        """Read the file and take what it holds as seen."""
        r = self.read()
        self.seen = r.key
        return r

    def poll(self, force: bool = False) -> ModeFileRead | None:
        """The file when it was written since the last look (or ``force``), else None."""
        r = self.read()
        if not force and r.key == self.seen:
            return None
        self.seen = r.key
        return r

    def write_back(self, mode: str, expected: Key | None = None) -> str:
        """Write the running ``mode`` into the file; returns '' or why it was not written.

        Written only when the file is what was last seen (``expected``, default: the last
        ``poll``/``write_back``), so an operator's newer write is never lost, and only
        over a usable file (or none). Atomic: a temporary file renamed over it.
        """
        cur = self.read()
        want = self.seen if expected is None else expected
        if cur.problem:
            return cur.problem
        if want is not None and cur.key != want:
            return "the file was written meanwhile: it is read next"
        if cur.text == mode:
            self.seen = cur.key
            return ""
        p = self.path
        perms = NEW_FILE_MODE
        with contextlib.suppress(OSError):
            perms = stat.S_IMODE(p.lstat().st_mode) & 0o755
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, perms)
            try:
                os.fchmod(fd, perms)
                os.write(fd, f"{mode}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, p)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return f"mode file {p}: cannot write ({exc.strerror or exc})"
        self.seen = self.read().key
        return ""
