"""Shared pytest configuration: the HIL rig plugin (fixtures ``rig``, ``hil_scenario``)."""

pytest_plugins = ["hil_rigs.pytest_plugin"]
