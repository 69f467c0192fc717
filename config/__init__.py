"""The reference configs, shipped as package data (import name ``potline_config``).

This folder is the place a user reads, copies and edits: the reference plant, tag maps,
scenarios, refining prototypes and a daemon example. The package maps it to the import
name ``potline_config`` so that an installed wheel carries the same files; code finds them
through ``twin.resources.config_dir()`` (``importlib.resources``), never by a path
relative to the source tree.
"""
