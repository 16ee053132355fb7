"""Demo stand-ins for PRD-005's tools: same flags, same output lines, no network.

``JOBRUNNER_DEMO_PACE`` (seconds per entry, default 0.4) makes a run faster or slower. A PLZ
filter of ``0`` makes a tool fail the way a real one does when DATEV cannot be reached (exit 2).
"""
