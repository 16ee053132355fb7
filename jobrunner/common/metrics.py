"""Every Prometheus metric jobrunner exports, in one place (README "Metrics" lists the same).

Metrics live in the process's default ``prometheus_client`` registry; each service process
counts only what it does itself, and the exposition (``common/metricsexposition.py``) adds the
``service`` label. Counters are process memory: they start at 0 when a service (re)starts, which
Prometheus's ``rate()`` and ``increase()`` handle as a counter reset.

Labels stay bounded whatever users send: job types and locks are folded to the configured names
(``KNOWN``), anything else becomes ``other``; statuses, outcomes and routes come from code.

Counting stays off the hot path's cost: callers count once per batch (``lines_published``
takes a whole LineLogged's count), never per line, and a counter increment is a lock-protected
float add with no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

OTHER = "other"  # the label of any job type or lock not in the configuration
NO_LOCK = "none"  # the lock label of jobs whose type names no lock


class KnownLabels:
    """The job types and locks of the configuration: the only values these labels take."""

    def __init__(self) -> None:
        self.job_types: set[str] = set()
        self.locks: set[str] = set()

    def learn(self, job_types: Iterable[str], locks: Iterable[str]) -> None:
        """Add a configuration's names (a process may load more than one job types file)."""
        self.job_types.update(job_types)
        self.locks.update(locks)

    def job_type(self, name: str) -> str:
        return name if name in self.job_types else OTHER

    def lock(self, name: str) -> str:
        return name if name in self.locks else OTHER


KNOWN = KnownLabels()

JOBS_STARTED = Counter(
    "jobrunner_jobs_started",
    "Jobs a runner started (status running), by job type.",
    ["job_type"],
)
JOBS_ENDED = Counter(
    "jobrunner_jobs_ended",
    "Jobs ended (completed, failed, cancelled) by the service that published the end.",
    ["job_type", "status"],
)
LINES_PUBLISHED = Counter(
    "jobrunner_lines_published",
    "Output lines the runner published to JetStream (counted per LineLogged batch).",
)
PUBLISH_RETRIES = Counter(
    "jobrunner_publish_retries",
    "JetStream requests (publishes, mostly) tried again after a transient error (NATS away).",
)
PROJECTOR_APPLIED = Counter(
    "jobrunner_projector_events_applied",
    "Stream events the projector took into its read models (its checkpoint's moves).",
)
PROJECTOR_SET_ASIDE = Counter(
    "jobrunner_projector_events_set_aside",
    "Events the projector could not apply and set aside (GET /api/projector/failures).",
)
SERVICE_STARTED = Gauge(
    "jobrunner_service_started",
    "1 once this service has finished its start (its streams, consumers and read models "
    "ready) and does its work; 0 while it starts. `jobrunner up` waits for it.",
)
# The projector's lag and checkpoint gauges: services/projector/lag.py (only a projector has them).
SSE_CLIENTS = Gauge(
    "jobrunner_sse_clients",
    "Open Server-Sent Events connections, by stream kind.",
    ["kind"],
)
SSE_STREAMS_CUT = Counter(
    "jobrunner_sse_streams_cut",
    "Job event streams the API ended without their job's end (the client resumes), by reason.",
    ["reason"],
)


class HandOverCounts:
    """What the fan-out's cost is counted in (bench/fanout_cost.py): a feed's hand-over of a
    batch, and each client handed one (written to its connection at once, or queued for its
    stream). Plain integers, read at exposition: two Counter increments (each takes a lock) per
    hand-over were 1.5 % of the API's CPU in the 100 jobs x 10 clients row."""

    def __init__(self) -> None:
        self.hand_overs = 0
        self.client_deliveries = 0

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "jobrunner_sse_hand_overs",
            "Batches of a job's events handed over by its feed to the job's SSE clients.",
            value=self.hand_overs,
        )
        yield CounterMetricFamily(
            "jobrunner_sse_client_deliveries",
            "Batches handed to one SSE client (written or queued; a client cut is not handed it).",
            value=self.client_deliveries,
        )


SSE_HAND_OVERS = HandOverCounts()
REGISTRY.register(SSE_HAND_OVERS)
HTTP_DURATION = Histogram(
    "jobrunner_http_request_duration_seconds",
    "API request durations until the answer's last byte, by route template (SSE excluded).",
    ["method", "route", "status"],
)
WEBHOOK_ATTEMPTS = Counter(
    "jobrunner_webhook_attempts",
    "Webhook delivery attempts by outcome (delivered, retrying, failed).",
    ["outcome"],
)
ARTIFACTS_STORED = Counter(
    "jobrunner_artifacts_stored",
    "Files the runner stored from jobs' output directories.",
)
ARTIFACT_BYTES = Counter(
    "jobrunner_artifact_bytes_stored",
    "Bytes of the files the runner stored from jobs' output directories.",
)
BATCHES_SUBMITTED = Counter(
    "jobrunner_batches_submitted",
    "Batches the API accepted (POST /api/jobs/batch), and their jobs in the next metric.",
)
BATCH_JOBS_SUBMITTED = Counter(
    "jobrunner_batch_jobs_submitted",
    "Jobs submitted as part of a batch.",
)


def job_started(job_type: str) -> None:
    JOBS_STARTED.labels(KNOWN.job_type(job_type)).inc()


def job_ended(job_type: str, status: str) -> None:
    JOBS_ENDED.labels(KNOWN.job_type(job_type), status).inc()


def lines_published(count: int) -> None:
    """One call per published batch of lines (not per line: the runner's hot path)."""
    LINES_PUBLISHED.inc(count)
