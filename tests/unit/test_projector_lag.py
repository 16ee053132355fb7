"""The projector's lag figures for /metrics, from values it holds (no NATS at scrape)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from jobrunner.services.projector.lag import Lag


def _sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_lag_is_the_stream_end_past_the_checkpoint_and_never_negative() -> None:
    """The lag is how many stored events the projector has not applied yet, at least 0."""
    lag = Lag()
    lag.progressed(10)
    lag.stream_last = 25
    assert lag.events_behind() == 15
    lag.progressed(30)  # applied past the last look at the stream's end
    assert lag.events_behind() == 0


def test_applied_events_count_moves_but_not_the_starting_checkpoint() -> None:
    """Events applied count from where the projector started, not from sequence 1."""
    applied = _sample("jobrunner_projector_events_applied_total") or 0.0
    lag = Lag()
    lag.progressed(1000)
    lag.progressed(1005)
    assert _sample("jobrunner_projector_events_applied_total") == applied + 5


def test_a_scrape_reads_the_running_projectors_figures() -> None:
    """Once a projector publishes its figures, /metrics shows its lag and checkpoint."""
    lag = Lag()
    lag.progressed(7)
    lag.stream_last = 9
    lag.publish()
    assert _sample("jobrunner_projector_lag_events") == 2
    assert _sample("jobrunner_projector_checkpoint") == 7
