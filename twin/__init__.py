"""Physics of the pot line: cells, refining pots, circuit, rectifier, observer (Numba kernels).

Knows nothing of protocols; imports only numpy and numba (plus pydantic for config).

Numba's on-disk cache only notices changes to the file that holds a jitted function,
while our kernels inline functions from sibling modules. So the cache directory is
keyed by a digest of every ``twin/*.py`` source: an upgrade or an edit never runs a
stale kernel. ``NUMBA_CACHE_DIR``, when set (e.g. by the systemd unit), is the base.

The OpenMP runtime behind Numba's parallel kernels reads its wait policy once, when
Numba's threading layer first starts it; so importing ``twin`` sets
``OMP_WAIT_POLICY=passive`` first (threads that wait sleep instead of spinning on cores
other jobs need; ``twin/threads.py`` has the reasons and the numbers), unless the
environment already sets a wait policy.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def _configure_numba_cache() -> None:
    if "numba" in sys.modules and os.environ.get("POTLINE_NUMBA_CACHE_SET"):
        return
    here = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for src in sorted(here.glob("*.py")):
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    base = os.environ.get("POTLINE_NUMBA_CACHE_BASE") or os.environ.get("NUMBA_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "potline-twin", "numba")
    os.environ["POTLINE_NUMBA_CACHE_BASE"] = base
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, digest.hexdigest()[:16])
    os.environ["POTLINE_NUMBA_CACHE_SET"] = "1"
    if "numba" in sys.modules:  # imported before us: point its live config at the same place
        from numba.core import config

        config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]  # type: ignore[attr-defined]


_configure_numba_cache()

from twin.threads import configure_wait_policy  # noqa: E402  (after the cache: both before numba starts)

configure_wait_policy()
