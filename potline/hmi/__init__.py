"""The operator's web HMI (``potline.hmi.app``): potroom map, cell and line trends, AE list,
alarm list with acknowledgement and shelving, journal browser, mode changes for operators.

``HmiServer(source, config, users=...)`` serves an ``HmiSource`` (``potline.hmi.source``)
from the caller's event loop; every asset ships in this package (``static/``).
"""

from potline.hmi.app import HmiConfig, HmiServer, static_dir
from potline.hmi.source import HmiSource, JournalQuery, LocalSource, Snapshot, plant_info, snapshot_from_scan

__all__ = [
    "HmiConfig",
    "HmiServer",
    "HmiSource",
    "JournalQuery",
    "LocalSource",
    "Snapshot",
    "plant_info",
    "snapshot_from_scan",
    "static_dir",
]
