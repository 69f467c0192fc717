"""The application: the ``potline`` CLI and its commands, the daemon (mode state machine,
OPC UA mirror, event routing, process lifecycle), the journal, metrics, systemd notify,
logging and the HTML reports. The top layer: it may import every other package.

Nothing is imported here: ``import potline`` stays cheap.
"""
