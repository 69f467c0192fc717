"""Shared pytest configuration: the HIL rig plugin (fixtures ``rig``, ``hil_scenario``) and
Hypothesis settings that keep the suite reproducible on a busy machine.

Hypothesis runs derandomized by default (the examples are seeded from each test, so every
run tries the same ones) with no per-example deadline and no too-slow health check (both
are wall-clock judgements that fail on a loaded machine, not on a bug). To search afresh:
``HYPOTHESIS_PROFILE=explore python -m pytest tests/plc_bridge``. Waiting in tests:
``tests/waits.py``.
"""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["hil_rigs.pytest_plugin"]

settings.register_profile(
    "seeded", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "seeded"))
