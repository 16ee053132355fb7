"""Embedded NATS and Postgres for ``jobrunner up`` and the tests: real servers, local binaries."""
