"""The HTTP API and web UI: validates requests, publishes commands as events, serves read models
and streams events over Server-Sent Events."""
