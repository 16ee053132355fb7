"""The three services of jobrunner: api, runner and projector."""
