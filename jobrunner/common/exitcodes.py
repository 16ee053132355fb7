"""The exit codes shared by jobrunner's commands (sysexits.h's, where one fits), beside 0 and
each command's own (README "Exit codes"): one place, so that a service, a command and the
terminal client mean the same by the same number."""

from __future__ import annotations

# EX_UNAVAILABLE: a server the command needs does not answer (the API for the terminal client;
# Postgres for `jobrunner replay`): starting it, or fixing its address, mends it.
UNAVAILABLE = 69
# EX_CONFIG: the configuration or the stored state is one this jobrunner must not use (a refused
# database_url, read models of a newer jobrunner): running again unchanged would only refuse
# again, so `jobrunner up` stops instead of restarting the service.
CONFIG = 78
