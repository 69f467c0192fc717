"""The bench: simulated rectifier and potroom PLCs driven by the twin, faults, scenarios.

Modules:

* ``rig`` — ``Rig``: the twin behind simulated PLCs on its own (accelerated) clock;
* ``plc_logic`` / ``plc_image`` — the PLCs' behaviour (watchdog, local/remote, command
  acks, interlocks, local AE kill) as pure state machines over a tag-map-shaped memory;
* ``edges`` — that memory served over Modbus TCP (``ModbusEdge``) or OPC UA (``OpcUaEdge``);
* ``netem`` — the loopback proxy in front of each PLC (link drops, latency);
* ``faults`` / ``scenarios`` — fault injection and the TOML scenarios in ``config/scenarios``;
* ``process`` — ``RigProcess``: a rig in a child process (``python -m hil_rigs serve``);
* ``session`` — ``ControllerSession``: BridgePlant + PotController + ControlRuntime against a rig;
* ``report`` — ``RigReport`` and the HIL assertions; ``pytest_plugin`` — the ``rig`` fixture;
* ``demo`` — ``potline demo``; ``campaign`` — refining campaigns (separate).

Nothing is imported here: ``import hil_rigs`` stays cheap.
"""
