"""What the API tells a client while the read models are not its version."""

from __future__ import annotations

import pytest

from jobrunner.common.readmodelversion import READMODEL_VERSION, UNVERSIONED
from jobrunner.services.api.readmodelgate import ReadModelState, exempt, is_page_visit, progress


@pytest.mark.parametrize(
    "path", ["/api/jobs", "/api/jobs/x/logs", "/jobs", "/", "/api/batches", "/healthz"]
)
def test_reads_of_the_read_models_are_gated(path: str) -> None:
    """Every page and API route that reads the tables waits for the right version."""
    assert not exempt(path)


@pytest.mark.parametrize(
    "path", ["/health", "/metrics", "/static/app.js", "/login", "/api/tokens", "/api/me"]
)
def test_health_metrics_static_files_and_sign_in_answer_meanwhile(path: str) -> None:
    """Health, metrics, static files, signing in and tokens need no read models and keep
    answering."""
    assert exempt(path)


def test_an_older_version_reads_as_rebuilding_with_its_progress() -> None:
    """Older tables: READ_MODELS_REBUILDING, with how far the rebuild has come of the stream."""
    state = ReadModelState(UNVERSIONED, rebuilt_seq=40, stream_last_seq=100)
    assert state.code == "READ_MODELS_REBUILDING"
    assert "rebuilt" in state.sentence()
    assert progress(state) == {
        "version": UNVERSIONED,
        "expected_version": READMODEL_VERSION,
        "rebuild": {"events_applied_upto": 40, "stream_last_seq": 100},
    }


def test_a_newer_version_reads_as_newer_without_progress() -> None:
    """Newer tables: READ_MODELS_NEWER, saying to upgrade this API instance."""
    state = ReadModelState(READMODEL_VERSION + 1)
    assert state.code == "READ_MODELS_NEWER"
    assert "upgrade this API instance" in state.sentence()
    assert "rebuild" not in progress(state)


def test_no_read_models_yet_reads_as_being_created() -> None:
    """Before the projector created the tables: 503 READ_MODELS_REBUILDING, "being created"."""
    state = ReadModelState(None)
    assert not state.current
    assert state.code == "READ_MODELS_REBUILDING"
    assert "being created" in state.sentence()


def test_a_browser_opening_a_page_gets_the_sentence_and_scripts_get_json() -> None:
    """A page visit (Accept: text/html) is answered with the plain sentence; fetch() and API
    clients (Accept: */* or application/json) keep the JSON error."""
    assert is_page_visit("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
    assert not is_page_visit("*/*")
    assert not is_page_visit("application/json")
    assert not is_page_visit("")
