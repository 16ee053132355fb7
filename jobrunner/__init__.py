"""jobrunner: run command-line jobs from a browser or an HTTP API and watch them live."""
