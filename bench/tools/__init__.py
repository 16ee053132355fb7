"""Tools the benchmark runs as jobs: they print what the measurements need."""
