"""The library every service shares: settings, the event store, slot leases, the stream reader,
job types, logging. It imports only ``jobrunner.contracts``."""
