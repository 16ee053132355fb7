"""The projector: the only writer of the Postgres read models."""
