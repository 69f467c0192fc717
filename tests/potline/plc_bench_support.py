"""Bench PLCs for daemon tests: the rig's PLC memory, logic and edges without the twin.

``BenchPlcs`` serves one rectifier PLC and one potroom PLC from any tag maps (a foreign
map served as its PLC would serve it: ``hil_rigs.plc_image``), scanning on the wall
clock every ``SCAN_S``; measurements are fixed values the test chose (the PLC's own
truth to compare with). The potroom's OPC UA edge may be secured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np

from hil_rigs.edges import ModbusEdge, OpcUaEdge
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import PotroomLogic, RectifierLogic
from plc_bridge.tagmap import TagMap

SCAN_S = 0.1  # the PLCs' own scan cycle [wall s]


class BenchPlcs:
    """A rectifier PLC on Modbus and a potroom PLC (Modbus or OPC UA), both scanning.

    Args:
        rect_map, room_map: the tag maps the PLCs serve.
        room_protocol: "modbus" or "opcua".
        room_security: the potroom OPC UA edge's security (``OpcUaSecurityConfig``).
        watchdog_s: both PLCs' heartbeat watchdog [s].
        line_current_ka, line_voltage_v, cell_voltage_v: what the PLCs measure.
    """

    def __init__(self, rect_map: TagMap, room_map: TagMap, *, room_protocol: str = "modbus",
                 room_security: Any = None, watchdog_s: float = 10.0, line_current_ka: float = 118.4,
                 line_voltage_v: float = 610.0, cell_voltage_v: np.ndarray | None = None) -> None:  # fmt: skip
        self.rect_img = PlcImage(rect_map)
        self.rect = RectifierLogic(self.rect_img, nominal_ka=120.0, min_ka=0.0, max_ka=132.0, watchdog_s=watchdog_s)
        self.room_img = PlcImage(room_map)
        self.n_cells = self.room_img.n_cells
        self.room = PotroomLogic(self.room_img, watchdog_s=watchdog_s)
        self.line_current_ka = line_current_ka
        self.line_voltage_v = line_voltage_v
        self.volts = (cell_voltage_v if cell_voltage_v is not None
                      else np.round(np.linspace(4.1, 4.45, self.n_cells), 3))  # fmt: skip
        self.rect_edge = ModbusEdge(self.rect_img)
        self.room_edge: ModbusEdge | OpcUaEdge = (
            OpcUaEdge(self.room_img, security=room_security) if room_protocol == "opcua" else ModbusEdge(self.room_img)
        )
        self._t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        #: (wall s since start, setpoint register [kA]) whenever the setpoint register changed
        self.setpoints: list[tuple[float, float]] = []

    async def start(self) -> BenchPlcs:
        self.scan()
        await self.rect_edge.start()
        await self.room_edge.start()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def scan(self) -> None:
        """One scan of both PLCs (measurements in, commands processed, edges published)."""
        now = time.monotonic() - self._t0
        z = np.zeros(self.n_cells, dtype=bool)
        self.rect.scan(now, SCAN_S)
        self.rect.publish(self.line_current_ka, self.line_voltage_v, 5, False, SCAN_S)
        sp = float(self.rect_img.get("line_current_sp"))
        if not self.setpoints or self.setpoints[-1][1] != sp:
            self.setpoints.append((now, sp))
        self.room.scan(now, z, z, z)
        self.room.publish(self.volts, z, z, z, z, np.zeros(self.n_cells), np.zeros(self.n_cells))
        self.rect_edge.publish()
        self.room_edge.publish()

    async def _run(self) -> None:
        while True:  # the PLCs' scan cycle
            self.scan()
            await asyncio.sleep(SCAN_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.room_edge.stop()
        await self.rect_edge.stop()
