"""One module per ``potline`` subcommand (see plc_bridge.cli)."""
