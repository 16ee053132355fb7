"""Embedded NATS and Postgres for ``jobrunner up`` and the test suite: real servers, local binaries."""
