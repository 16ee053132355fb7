"""The runner: claims slot leases and runs job types' tools, publishing what they print."""
