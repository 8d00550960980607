"""SNMP on the site: the device poller (pysnmp on the asyncio reactor)."""
