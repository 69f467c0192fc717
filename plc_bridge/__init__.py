"""The wire: tag maps, Modbus TCP and OPC UA clients/servers, safe writes, daemon and CLI."""
