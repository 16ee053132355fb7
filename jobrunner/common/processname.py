"""The name a service process goes by (a runner's ``runner_id``, an API's ``api_instance_id``):
the configured one, or one made for this process that no other process, nor a later start of the
same pid, goes by."""

from __future__ import annotations

import os
import uuid

from jobrunner.common.slots import hostname


def process_name(configured: str) -> str:
    """``configured``, or ``<host>-<pid>-<6 random hex digits>``."""
    return configured or f"{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
