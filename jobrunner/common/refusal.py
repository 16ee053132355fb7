"""A service that finds stored state it must not use refuses to start, with one sentence.

Read models written by a newer jobrunner, or older ones it may not rebuild, and an event stream
holding events of a newer contract: restarting the service would only refuse again, so it exits
with ``REFUSED_EXIT`` and ``jobrunner up`` stops instead of restarting it.
"""

from __future__ import annotations

from jobrunner.common import exitcodes
from jobrunner.common.settings import SettingsError

REFUSED_EXIT = exitcodes.CONFIG


class StateRefused(SettingsError):
    """The stored state (read models, event stream) is one this jobrunner must not use."""
