"""A fault-suite tool whose ordinary-looking output has wedged shared parts before (issue 11):
numbers too large for the progress columns, NUL in lines, progress and results, and long lines of
control characters whose JSON is six times their length. Every plain line starts with
``poison line <i>`` so the suite can count them whatever cleaning the rest of the line gets."""

import sys

LONG = 60_000  # under the runner's 64 KiB line limit: one line each, ~360 KB as JSON
plain = [
    "INFO starting",
    "step [99999999999/99999999999]",  # the default progress pattern, past any integer column
    "text with a NUL \x00 inside",
    *("\x01" * LONG for _ in range(6)),
    "INFO done",
]
protocol = [
    '##jobrunner:progress {"current": 1, "total": 2, "phase": "a\\u0000b", "message": "m\\u0000"}',
    '##jobrunner:progress {"current": 99999999999, "total": 99999999999}',
    '##jobrunner:result {"summary": "x\\u0000y"}',
]
out = sys.stdout
for i, text in enumerate(plain[:3], 1):
    out.write(f"poison line {i} {text}\n")
for line in protocol:
    out.write(line + "\n")
for i, text in enumerate(plain[3:], 4):
    out.write(f"poison line {i} {text}\n")
out.flush()
