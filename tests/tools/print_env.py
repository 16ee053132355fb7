"""A test tool: prints the names of its environment variables, one per line."""

import os

for name in sorted(os.environ):
    print(name)
