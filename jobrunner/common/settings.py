"""One settings object for every service: a TOML config file, then environment variables.

Each field can be set in the config file (``jobrunner.toml``, top-level keys named as the fields)
or by an environment variable ``JOBRUNNER_<FIELD>`` (upper case), which wins over the file.
Every other ``JOBRUNNER_`` variable is either one another part reads (``OTHER_VARIABLES``) or a
mistake, named by ``stray_variables``: a typo in the environment must not quietly leave a
setting at its default any more than one in the file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from jobrunner.common.metricsconfig import MetricsAddressError, parse_address, parse_peers
from jobrunner.common.settingsrefusal import ENV_PREFIX as ENV_PREFIX
from jobrunner.common.settingsrefusal import (
    SettingRefused,
    Shape,
    refused,
    what_it_takes,
    written,
)

DEFAULT_JOB_TYPES = Path(__file__).with_name("default_jobtypes.toml")


# The stream's read bound when neither configured nor shortened by a short keep-alive.
STREAM_READ_TIMEOUT_SECONDS = 5.0


class SettingsError(Exception):
    """A setting no service can honour, in a sentence (the start stops: exit 78)."""


# dict: the instance also keeps, out of its fields, where load_settings found each value
# (``sources``) and the values it took the largest in place of (``capped``). A copy keeps them
# only when made with ``replaced``: msgspec.structs.replace, dataclasses.replace and copy.copy
# leave them behind (tests/test_code_quality.py refuses those on settings).
class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    # Where things are
    nats_url: str = "nats://127.0.0.1:4222"  # a cluster: its servers' URLs, comma-separated
    # How every part connects to NATS (nats-py and the projector's stream reader alike; see
    # common/natsconnection.py): each step of a connect (TCP, the server's INFO, TLS, the
    # handshake) gives up on a server after this long and tries the next one.
    nats_connect_timeout_seconds: float = 2.0
    # TLS: the authority that signed the servers' certificates (empty: the system's), and a
    # client certificate with its key when the servers verify clients.
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    nats_tls_hostname: str = ""  # the name to verify the server's certificate for, if not the URL's
    # NKey authentication: a file holding the user's seed (SU...); needs jobrunner[nkeys].
    nats_nkey_seed_file: str = ""
    # A creds file (user JWT and seed, from nsc or a NATS service); needs jobrunner[nkeys] too.
    nats_creds_file: str = ""
    database_url: str = "postgresql://jobrunner@127.0.0.1:5432/jobrunner"
    prefix: str = "jobrunner"
    job_types_file: str = str(DEFAULT_JOB_TYPES)
    state_dir: str = ".jobrunner"
    # `jobrunner up` runs the projector and the notifier this much nicer than the runner and the
    # API (0: all alike), so a job's start and its lines get the cores first.
    background_nice: int = 10
    # How long `jobrunner up` waits for every service it started to finish its start before it
    # says it is running all the same, naming the late ones (a late projector is not fatal).
    up_ready_timeout_seconds: float = 60.0
    # The runner runs the tools this much nicer than itself (0: alike), so that the control
    # plane (runner, API, NATS) keeps its share of the cores whatever a tool does. Off by
    # default: on a machine with cores to spare it costs a flooding tool's throughput and does
    # not shorten other jobs' delays (bench/RESULTS.md, "No noisy neighbour, session 11").
    tool_nice: int = 0

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    # This API instance's name in ``GET /health`` (``instance``), so that whoever probes an
    # address can tell which instance answered (behind a load balancer; a port another server
    # took). Empty: ``<host>-<pid>-<6 random hex digits>``, new at every start.
    api_instance_id: str = ""

    # Runner
    runner_id: str = ""
    max_concurrent_jobs: int = 8
    lease_ttl_seconds: float = 15.0
    line_batch_max: int = 1000
    max_line_bytes: int = 65536
    # Each runner says it is alive this often; it counts as gone after three missed beats.
    runner_heartbeat_seconds: float = 5.0
    # A lock's queue entry whose job's request is not in the stream (the API died between the
    # two, or its publish was lost on the way) is dropped by the lock's next waiting job once
    # it is this old. It must outlast the API's own enqueue-to-stored gap (see
    # QUEUE_ORPHAN_MIN_SECONDS), or a job whose publish is merely slow loses its place.
    queue_orphan_seconds: float = 30.0
    # Demo tools: seconds between items; 0 runs them as fast as possible.
    demo_pace: float = 0.4

    # Artifacts (README "Artifacts"): what a job leaves in its JOBRUNNER_OUTPUT_DIR is stored in
    # the artifacts object store. A file over the first limit, or beyond the second counted over
    # the job's files, is not stored: the job's log says so and it ends ARTIFACT_TOO_LARGE.
    artifact_max_file_bytes: int = 1 << 30
    artifact_max_job_bytes: int = 4 << 30
    # Where the runner makes each job's output directory (empty: <state_dir>/outputs); one runner
    # host's own: a runner starting removes what a killed one left there.
    artifact_work_dir: str = ""
    # A download (GET .../artifacts/..., .../download-archive) that gets no data from NATS for
    # this long is cut off (the client sees an incomplete body) rather than left hanging.
    artifact_read_idle_seconds: float = 10.0
    # Every API looks this often for artifact content left to purge by another (killed) API
    # (README "Artifacts": replaced content); also once at start.
    artifact_purge_sweep_seconds: float = 5.0

    # Event stream limits (0 means unlimited)
    stream_max_age_days: float = 0
    stream_max_bytes: int = 0
    # Consumers the event stream holds at once: every SSE catch-up read, job feed and update
    # stream is one while it reads, plus the services' own. Set on the stream explicitly: one
    # that sets none gets the server's default (1,000 on nats-server 2.15), and at the limit
    # JetStream refuses every new consumer (err_code 10026).
    stream_max_consumers: int = 10_000
    # Read-model retention: finished jobs (and their lines) older than this leave Postgres; their
    # events stay in the stream as long as the stream limits keep them (0 keeps them forever).
    readmodel_retention_days: float = 0
    # A projector that finds read models older than itself rebuilds them from the stream beside
    # the old ones and swaps them in (README "Upgrading"); off: it refuses to start instead and
    # names the command to run (for a database other installations read too).
    readmodel_auto_rebuild: bool = True
    stream_replicas: int = 1
    # GET /health: the projector counts as stuck when the oldest event waiting for it was stored
    # longer ago than this.
    projector_stuck_seconds: float = 10.0
    # The projector gives up a Postgres connection whose server host has acknowledged nothing
    # (TCP keepalive, unacknowledged data) for about this long: a host gone or cut off, not a
    # slow or frozen Postgres (projector/peerliveness.py); its backends give up a silent projector
    # after the same bound, and its lock waits end after twice it (the batch is tried again).
    projector_postgres_dead_seconds: float = 30.0
    # `jobrunner replay` and the projector's rebuild count Postgres gone once a probe (SELECT 1
    # on a connection of its own) goes unanswered this long (common/postgreswatch.py): a host's
    # stall shorter than this must not throw away a replay of hours.
    replay_postgres_answer_seconds: float = 30.0

    # The API's reads of the read models: waiting for a pooled connection, the query and its
    # release within this, else 503 READ_MODELS_TIMEOUT and the connection is terminated (a
    # frozen Postgres must not hang requests). Above the slowest legitimate read: a search
    # through a ten-million-line log (bench/RESULTS.md, session 20).
    api_read_timeout_seconds: float = 60.0
    # A request's line and headers must arrive within this of their first byte, else 408
    # REQUEST_HEAD_TIMEOUT: a client sending its head slowly (or never ending it) would hold a
    # connection and up to 64 KiB of the API's memory for as long as it liked. Far above what
    # a real client on a slow link takes (a few KiB: well under a second).
    request_head_timeout_seconds: float = 20.0
    # GET /health's read of Postgres, shorter: an orchestrator's probe must get an answer.
    health_postgres_timeout_seconds: float = 1.0
    # Each read a live SSE stream makes of the read models (a job it meets, its owner, a
    # batch's row, how far the projector got): past it the stream goes on from the events, as
    # with Postgres stopped, and tells the client to resync once reads answer again. Longer
    # than health's: a Postgres that is merely slow must not cost a stream its look-ups. Below
    # sse_keepalive_seconds: a stream waiting on a read sends no keep-alive (when not
    # configured: half the keep-alive's interval if that is shorter than 5 s).
    stream_read_timeout_seconds: float = STREAM_READ_TIMEOUT_SECONDS
    # GET /health's reads of NATS (the stream's end, the oldest waiting event, the runners), one
    # bound for all: a frozen NATS keeps the connection up, and each read used to wait out
    # nats-py's 5 s request timeout, then health said "ok".
    health_nats_timeout_seconds: float = 2.0
    # While GET /health is not ok, it logs its first answer at once, then at most one line per
    # this long (with the count of answers left out), and a line when it is ok again: a load
    # balancer polling every second filled the log with one line a second.
    health_log_seconds: float = 60.0

    # SSE
    sse_keepalive_seconds: float = 15.0
    sse_retry_ms: int = 3000
    # Bytes of events one SSE client may have waiting, and all clients of one API process
    # together; a client over either is disconnected and resumes by Last-Event-ID.
    sse_client_buffer_bytes: int = 8 * 1024 * 1024
    sse_total_buffer_bytes: int = 256 * 1024 * 1024
    # A client's catch-up read from JetStream that gets nothing for this long is disconnected
    # (it resumes) rather than left with a gap.
    sse_history_idle_seconds: float = 10.0
    # Catch-up reads from JetStream one API process runs at once (each holds a consumer of the
    # event stream, ``stream_max_consumers``); more viewers wait their turn.
    sse_history_reads: int = 256
    # The API tells its live viewers (SSE ``stale``) once NATS has not answered its probe for
    # this long, and again when it answers: above the round trip of a healthy server on a loaded
    # machine (milliseconds; an event loop stalled a second is already reported as a fault,
    # stallwatch.STALL_SECONDS), well below the 15 s lease a frozen NATS costs the job.
    nats_silence_seconds: float = 3.0

    # Access (README "Security and access")
    auth: bool = True  # off only with --no-auth on a loopback address
    max_streams_per_token: int = 32  # open SSE connections per token; more answer 429
    session_max_age_seconds: int = 43200  # browser sessions (signed cookie) last this long
    # Host names requests may name (comma-separated; ".example.com" takes its subdomains too,
    # "*" any). Empty: the configured host, and the localhost names when that is loopback.
    allowed_hosts: str = ""

    # Webhooks (README "Webhooks"), delivered by the notifier service.
    # Signs every delivery (X-Jobrunner-Signature) unless the job type names its own secret.
    # Empty: deliveries go unsigned and the notifier warns at start (`jobrunner up` makes one).
    webhook_secret: str = ""
    # How long a webhook is retried (from its first attempt) before it is recorded as failed.
    webhook_retry_seconds: float = 3600.0
    # Waits between attempts: doubling from the first, at most the longest, with jitter.
    webhook_first_retry_seconds: float = 1.0
    webhook_longest_retry_seconds: float = 300.0
    # One attempt gives up connecting after the first, and waiting for the answer after the
    # second.
    webhook_connect_timeout_seconds: float = 5.0
    webhook_timeout_seconds: float = 10.0
    # Addresses webhooks may reach although they are loopback, private, link-local or otherwise
    # internal (comma-separated): host names as written in the URL, IP addresses, networks
    # ("10.20.0.0/16"). Empty: only public addresses.
    webhook_allow_hosts: str = ""
    # The authority that signed https receivers' certificates, when not one the system trusts.
    webhook_tls_ca_file: str = ""
    # A notifier that stops saying "still working on it" for this long (it died) has its job
    # handed to another notifier, which goes on with the same delivery ids.
    notifier_ack_wait_seconds: float = 30.0
    # Jobs whose webhooks one notifier delivers at the same time.
    notifier_max_concurrent: int = 64
    # Batches (README "Submitting a batch")
    batch_max_jobs: int = 10_000  # jobs one POST /api/jobs/batch may hold
    # A batch request may be this large (every other request: 1 MiB).
    batch_max_body_bytes: int = 32 * 1024 * 1024
    # A job of a batch whose BatchSealed is not stored this long after its JobRequested (its
    # submission died half-way) ends failed with BATCH_INCOMPLETE instead of waiting forever.
    batch_seal_timeout_seconds: float = 300.0
    # How long an Idempotency-Key is remembered (a retry after that creates a new batch).
    idempotency_ttl_seconds: float = 86400.0

    # Metrics (README "Metrics"): this service's own /metrics listener, host:port with no token
    # (empty: none; `jobrunner up` gives each child one on loopback). The API's GET /metrics
    # also reads the services named in metrics_peers (name=http://host:port, comma-separated),
    # each within metrics_peer_timeout_seconds.
    metrics_address: str = ""
    metrics_peers: str = ""
    metrics_peer_timeout_seconds: float = 2.0
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    # A service's whole stop, from its SIGTERM to its exit, with NATS or Postgres not answering:
    # what it still waits for is given up (and logged) at this end, and the exit follows within
    # a few seconds. Well below the 20 s after which `jobrunner up` kills a service
    # (supervisor.py): a killed service is not a clean stop.
    stop_seconds: float = 15.0

    def __post_init__(self) -> None:
        # A value no service can honour stops every service at start, naming the setting,
        # instead of a runner that never takes a job (0 slots), a lease that lapses at once or
        # a timeout that overflows the clock it is given to (inf, 1e308).
        for name, bounds in BOUNDS.items():
            value = getattr(self, name)
            if name in CAPPED and value > bounds.high:
                # Worked before the bound was set: an upgrade must not stop the service.
                self.__dict__.setdefault("_capped", {})[name] = value
                setattr(self, name, bounds.high if isinstance(value, float) else int(bounds.high))
            elif not bounds.holds(value):  # also refuses NaN
                raise SettingRefused(name, value, "is out of range", _takes(name))
        if self.metrics_address:
            try:
                parse_address(self.metrics_address)
            except MetricsAddressError:
                raise SettingRefused(
                    "metrics_address",
                    self.metrics_address,
                    "is not host:port",
                    _takes("metrics_address"),
                ) from None
        try:
            parse_peers(self.metrics_peers)
        except MetricsAddressError:
            raise SettingRefused(
                "metrics_peers",
                self.metrics_peers,
                "has an entry that is not name=http://host:port",
                _takes("metrics_peers"),
            ) from None
        if self.log_format not in LOG_FORMATS:
            raise SettingRefused(
                "log_format", self.log_format, "is not a format there is", _takes("log_format")
            )
        # The five levels README names, in any case: one there is not was taken for info (a
        # "debgu" left the operator without the lines asked for), and Python's other names
        # (notset, warn, fatal) are no promise of ours.
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingRefused(
                "log_level", self.log_level, "is not a level there is", _takes("log_level")
            )

    def replaced(self, *, source: str | None = None, **changes: Any) -> Settings:
        """A copy with ``changes``, which keeps where each other value came from (and what
        was written in place of a capped one), so that a refusal or a warning about the copy
        names the right variable, file key or flag. ``source``: where the changed values come
        from (a file of ``jobrunner up``'s, say); None for values given in code, told as
        ``name = value``. A changed value no service can honour is refused naming it."""
        try:
            copy = msgspec.structs.replace(self, **changes)
        except SettingRefused as exc:
            exc.source = source
            raise
        sources = {k: v for k, v in sources_of(self).items() if k not in changes}
        if source is not None:
            sources.update(dict.fromkeys(changes, source))
        capped = {k: v for k, v in capped_values(self).items() if k not in changes}
        copy.__dict__["_capped"] = capped | capped_values(copy)  # the changes' own, as given
        copy.__dict__["_sources"] = sources
        return copy


class Bounds(msgspec.Struct, frozen=True):
    """The values a numeric setting takes: from ``low`` to ``high``, both finite, and 0 too if
    ``zero_too`` (a limit's "none")."""

    low: float
    high: float
    zero_too: bool = False

    def holds(self, value: float) -> bool:
        # Written so that NaN fails every comparison and is refused.
        return (self.zero_too and value == 0) or self.low <= value <= self.high

    def words(self) -> str:
        range_ = f"from {_number(self.low)} to {_number(self.high)}"
        return f"0 or {range_}" if self.zero_too else range_


def _number(value: float) -> str:
    """A bound as an operator would write it: no exponent, no thousands' commas."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.10f}".rstrip("0")


# The API's publish of a job's request gives up after this (nats-py's JetStream publish
# timeout, which the API keeps).
API_PUBLISH_TIMEOUT_SECONDS = 5.0
# A queue entry must not be found dead while its job's request may still be stored. The longest
# gap between the entry's stamp and that store is a restart's: its entry written in up to
# ``slots.ENQUEUE_ACK_SECONDS`` (10 s), then ``publish_many``'s ack wait (5 s) and its resend
# (5 s); a POST's is shorter (one write, one publish). Plus 2 s, once a margin for the clocks of
# the API (which stamps the entry) and the runners; they compare no clocks now (a runner counts
# the age on its own, from its first look: runner/queue_orphans.py), and it stays a margin.
QUEUE_ORPHAN_MIN_SECONDS = 10.0 + 2 * API_PUBLISH_TIMEOUT_SECONDS + 2.0
# Requests the runners' consumer lets them hold unacknowledged, all runners together
# (runner/service.py): a runner never has more jobs than that to run at once.
RUNNER_REQUESTS_IN_FLIGHT = 10_000

# The upper bounds: what the parts a value is handed to can hold. A duration ends up as int64
# nanoseconds in JetStream (ack waits, TTLs, max ages) and in Python's own clocks (time.sleep,
# threading's waits: threading.TIMEOUT_MAX): 292 years; beyond, they overflow or refuse.
LONGEST_SECONDS = (2**63 - 1) // 10**9
LONGEST_DAYS = LONGEST_SECONDS // 86400
# Byte sizes and counts end up in JetStream's configuration and Postgres' bigint columns: int64.
LARGEST_COUNT = 2**63 - 1
# The largest message a NATS server takes (its max_payload cannot be set higher).
NATS_LARGEST_PAYLOAD = 64 * 1024 * 1024


# The shortest wait a duration setting takes: 0 is no wait at all, and a keep-alive, a retry or
# a poll every 1e-300 s would spin its loop.
SHORTEST_SECONDS = 0.001
# JetStream de-duplicates a re-published event id within this window (eventstore).
EVENTS_DUPLICATE_WINDOW_SECONDS = 120.0
# The shortest max age and TTL JetStream takes (err_code 10052, "max age needs to be >= 100ms"),
# and a TTL of 1e-10 s it stored as 0: kept for ever.
JETSTREAM_SHORTEST_AGE_SECONDS = 0.1


def _seconds(*, low: float = SHORTEST_SECONDS, high: float = LONGEST_SECONDS) -> Bounds:
    """A duration from ``low`` (a millisecond) to ``high``."""
    return Bounds(low, high)


BOUNDS: dict[str, Bounds] = {
    "port": Bounds(0, 65535),
    "background_nice": Bounds(0, 19),  # the kernel's range of niceness
    "tool_nice": Bounds(0, 19),
    "nats_connect_timeout_seconds": _seconds(),
    "up_ready_timeout_seconds": _seconds(),
    # The runners' request consumer's max_ack_pending, all runners together (capped: CAPPED).
    "max_concurrent_jobs": Bounds(1, RUNNER_REQUESTS_IN_FLIGHT),
    # The shortest the fault suite proves (tests/faults, SHORT_TTL). Below it the keeper's
    # margin (a quarter), the renewals (every sixth, at least 0.3 s apart) and the guardian's
    # slack before the expiry (3/32: 0.28 s of 3 s) are shorter than a loaded machine's pauses:
    # a healthy runner would lose its leases, and a stalled one's tool outlive its lease.
    # The lock bucket keeps an expired lease's marker four TTLs (eventstore, limit_marker_ttl).
    "lease_ttl_seconds": Bounds(3, LONGEST_SECONDS // 4),
    # No NATS message holds more lines: each line's JSON is over 64 bytes.
    "line_batch_max": Bounds(1, NATS_LARGEST_PAYLOAD // 64),
    # A piece's JSON may be 6 bytes per byte (control characters as \u00XX); the runner checks
    # it against its own server's max_payload at start.
    "max_line_bytes": Bounds(1, NATS_LARGEST_PAYLOAD // 6),
    # The heartbeat bucket's TTL is three beats (runnerpool.MISSED_BEATS): at least JetStream's
    # shortest (3 x 0.034 s), at most int64 nanoseconds.
    "runner_heartbeat_seconds": _seconds(low=0.034, high=LONGEST_SECONDS // 3),
    # A queued job's request may be stored that long after its queue entry (a restart's queue
    # write, then its publish and resend): an entry younger may not be found dead.
    "queue_orphan_seconds": Bounds(QUEUE_ORPHAN_MIN_SECONDS, LONGEST_SECONDS),
    "demo_pace": Bounds(0, LONGEST_SECONDS),
    "artifact_max_file_bytes": Bounds(0, LARGEST_COUNT),
    "artifact_max_job_bytes": Bounds(0, LARGEST_COUNT),
    # A download's consumer's inactive threshold is three times it
    # (artifactstore._inactive_threshold), in int64 nanoseconds in JetStream.
    "artifact_read_idle_seconds": _seconds(high=LONGEST_SECONDS // 3),
    "artifact_purge_sweep_seconds": _seconds(),
    # 0: no limit; else at least the event stream's duplicate window, which JetStream takes
    # only within the max age (error 10052 stopped the start), in a round figure of days
    # (0.0014: 121 s).
    "stream_max_age_days": Bounds(0.0014, LONGEST_DAYS, zero_too=True),
    "stream_max_bytes": Bounds(0, LARGEST_COUNT),
    # The services' own: the runners' and the notifiers' consumers, the projector's reader, and
    # one catch-up read of the API at a time (below, JetStream refused the notifier's: 10026).
    "stream_max_consumers": Bounds(4, LARGEST_COUNT),
    "readmodel_retention_days": Bounds(0, LONGEST_DAYS),
    "stream_replicas": Bounds(1, 5),  # JetStream's own limit
    "projector_stuck_seconds": _seconds(),
    # Its TCP keepalive probes start after half of it (projector/peerliveness.py), which Linux
    # takes up to 32767 s (MAX_TCP_KEEPIDLE); its lock waits, twice it, a Postgres lock_timeout,
    # stay far within int32 milliseconds.
    "projector_postgres_dead_seconds": _seconds(high=2 * 32767 + 1),
    "replay_postgres_answer_seconds": _seconds(),
    "api_read_timeout_seconds": _seconds(),
    "request_head_timeout_seconds": _seconds(),
    "health_postgres_timeout_seconds": _seconds(),
    # Below sse_keepalive_seconds, whose longest is LONGEST_SECONDS.
    "stream_read_timeout_seconds": _seconds(high=LONGEST_SECONDS - 1),
    # Its read bound when not configured is half of it: at least the shortest.
    "sse_keepalive_seconds": _seconds(low=2 * SHORTEST_SECONDS),
    "health_nats_timeout_seconds": _seconds(),
    "health_log_seconds": _seconds(),
    # A browser waits for it with setTimeout, which fires at once past int32 milliseconds.
    "sse_retry_ms": Bounds(0, 2**31 - 1),
    # A client buffer must hold at least one full message batch, or every live client is cut.
    "sse_client_buffer_bytes": Bounds(1024 * 1024, LARGEST_COUNT),
    "sse_total_buffer_bytes": Bounds(1024 * 1024, LARGEST_COUNT),
    "sse_history_idle_seconds": _seconds(),
    "sse_history_reads": Bounds(1, LARGEST_COUNT),
    # Below 1 s, an event loop stalled that long on a loaded machine (which stallwatch reports
    # as a fault of its own) would be told to every live viewer as NATS gone silent.
    "nats_silence_seconds": Bounds(1, LONGEST_SECONDS),
    "max_streams_per_token": Bounds(1, LARGEST_COUNT),
    # Browsers keep no cookie longer than 400 days (RFC 6265bis): a longer session would end
    # earlier than the setting says.
    "session_max_age_seconds": Bounds(1, 400 * 86400),
    "webhook_retry_seconds": Bounds(0, LONGEST_SECONDS),
    "webhook_first_retry_seconds": _seconds(),
    "webhook_longest_retry_seconds": _seconds(),
    "webhook_connect_timeout_seconds": _seconds(),
    "webhook_timeout_seconds": _seconds(),
    "notifier_ack_wait_seconds": _seconds(),
    "notifier_max_concurrent": Bounds(1, LARGEST_COUNT),
    # One event per job: the bound keeps a batch's submission (and the runners' waiting for its
    # seal) within what one API request can publish in reasonable time.
    "batch_max_jobs": Bounds(1, 1_000_000),
    # At least the app-wide 1 MiB: a batch may always be as large as a single-job request.
    "batch_max_body_bytes": Bounds(1024 * 1024, 2**31 - 1),
    "batch_seal_timeout_seconds": _seconds(),
    # The Idempotency-Key bucket's TTL.
    "idempotency_ttl_seconds": _seconds(low=JETSTREAM_SHORTEST_AGE_SECONDS),
    "metrics_peer_timeout_seconds": _seconds(),
    # 5 s below the supervisor's 20 s grace (supervisor.STOP_GRACE_SECONDS): a few waits run
    # past the deadline (the feed close's second after its abort, uvicorn's tick, a NATS
    # close's end after its abort, the interpreter's exit).
    "stop_seconds": Bounds(1, 15),
}
# Settings whose bound came after values above it worked (session 39): such a value is taken as
# the bound, and the start warns (``capped_settings``) rather than refuses, so that an upgrade
# stops no service. What each bound is, for the warning.
CAPPED = {
    "session_max_age_seconds": "browsers keep no cookie longer than 400 days",
    "line_batch_max": "no NATS message holds more lines",
    "max_concurrent_jobs": "the runners hold no more requests than that, all runners together",
}
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")  # as README names them
# Settings that no service reads any more, still accepted in a config file so that one written
# for an older jobrunner loads; what each became.
RETIRED = {
    "line_flush_interval_ms": "a runner sends a job's lines as soon as its previous message is "
    "acknowledged, and when many jobs print, on the ticks of one clock for all of them",
}


def _refuse_unknown(values: dict[str, Any], path: Path) -> None:
    """A key the config file has that is no setting (a typo, say) stops the service: named,
    with the closest setting (msgspec's own refusal names only the key). Retired ones are
    dropped."""
    fields = Settings.__struct_fields__
    for key in list(values):
        if key in RETIRED:
            del values[key]
        elif key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(f"config file {path} has {key!r}, which is no setting{hint}")


# ``JOBRUNNER_`` variables that are no setting: read by another command or part, or set for one.
# The settings ignore them; any other that is no setting's is stray (README "Configuration").
OTHER_VARIABLES = frozenset(
    {
        f"{ENV_PREFIX}CONFIG",  # the config file
        f"{ENV_PREFIX}URL",  # the terminal client's server
        f"{ENV_PREFIX}TOKEN",  # the terminal client's token
        f"{ENV_PREFIX}OUTPUT_DIR",  # a job's output directory, given to its tool by the runner
        f"{ENV_PREFIX}GUARDIAN",  # the runner's mark on a tool's processes
        f"{ENV_PREFIX}CALLBACK_TOKEN",  # an external job's token (examples/external_worker.py)
        f"{ENV_PREFIX}BIND",  # the address compose.yaml publishes the API on
    }
)
# The test suite's, the benchmarks' and the API fuzzer's own (README "Tests", "Benchmarks").
# Matched as written, like every variable name (case-sensitive): jobrunner_test_x is stray,
# told its upper-case form.
OTHER_VARIABLE_PREFIXES = (f"{ENV_PREFIX}TEST_", f"{ENV_PREFIX}BENCH_", f"{ENV_PREFIX}FUZZ_")

# Kubernetes gives every pod, for each Service of its namespace, variables named after the
# Service (its name in upper case, "-" as "_"): a Service named jobrunner or jobrunner-nats
# makes JOBRUNNER_SERVICE_HOST, JOBRUNNER_NATS_PORT_4222_TCP_ADDR and the like ("service
# links", on unless a pod spec says enableServiceLinks: false). No operator wrote them, so none
# may stop a service. Their names, but for <SERVICE>_PORT, which _LINK_ADDRESS recognises by
# its value:
_LINK_NAME = re.compile(
    rf"{ENV_PREFIX}(?:[A-Z0-9_]+_)?"
    r"(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)"
)
# <SERVICE>_PORT=tcp://10.0.0.1:8000 (the Service's first port): for a Service named jobrunner,
# JOBRUNNER_PORT, the `port` setting's variable. No port is written so.
_LINK_PORT_NAME = re.compile(rf"{ENV_PREFIX}(?:[A-Z0-9_]+_)?PORT")
_LINK_ADDRESS = re.compile(r"(?:tcp|udp|sctp)://")


def _is_link_address(name: str, value: str) -> bool:
    """``JOBRUNNER_..._PORT=tcp://...``: a Service's address, even where it is a setting's name."""
    return _LINK_PORT_NAME.fullmatch(name) is not None and _LINK_ADDRESS.match(value) is not None


def _setting_variables() -> dict[str, str]:
    """Each setting's variable, by the setting's name."""
    return {name: f"{ENV_PREFIX}{name.upper()}" for name in Settings.__struct_fields__}


def ignored_service_links(environ: Mapping[str, str], settings: Settings) -> list[str]:
    """A sentence for each setting's variable that ``load_settings`` passed over because its
    value is a Service's address (``JOBRUNNER_PORT=tcp://10.0.0.1:8000``): which Service made
    it, and the value the setting kept (``--port``'s, the config file's, or its default)."""
    sentences = []
    for name, variable in _setting_variables().items():
        value = environ.get(variable)
        if value is not None and _is_link_address(variable, value):
            service = variable.removesuffix("_PORT").lower().replace("_", "-")
            sentences.append(
                f"{variable}={value} is a Kubernetes service link (a Service named {service}), "
                f"not a port: ignored; {name} stays {getattr(settings, name)}"
            )
    return sentences


def stray_variables(environ: Mapping[str, str]) -> list[str]:
    """One sentence for each ``JOBRUNNER_`` variable of ``environ`` (in any case) that is
    neither a setting's, a retired setting's, a Kubernetes service link nor in
    ``OTHER_VARIABLES``, with the closest variable there is."""
    settings = {name.upper(): variable for name, variable in _setting_variables().items()}
    others = {name.removeprefix(ENV_PREFIX): name for name in OTHER_VARIABLES}
    known = settings | others
    # Accepted, as the config file accepts their keys, but never offered as a guess.
    retired = {f"{ENV_PREFIX}{name.upper()}" for name in RETIRED}
    sentences = []
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        if name.startswith(OTHER_VARIABLE_PREFIXES) or name in known.values() or name in retired:
            continue
        # (A setting's own variable was passed over above, whatever its name looks like.)
        if _LINK_NAME.fullmatch(name) or _is_link_address(name, value):
            continue
        # A known name in another case: its upper case. Else matched on the part after the
        # prefix, which every candidate shares (it would make any two names look alike).
        suffix = upper.removeprefix(ENV_PREFIX)
        if suffix in known or upper.startswith(OTHER_VARIABLE_PREFIXES):
            hint = f"; did you mean {upper}?"
        elif close := difflib.get_close_matches(suffix, known, n=1):
            hint = f"; did you mean {known[close[0]]}?"
        else:
            hint = " (README, Configuration, lists the variables)"
        sentences.append(f"{name} is set but is no setting{hint}")
    return sentences


def load_settings(
    config_file: str | Path | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the config file (if any), then ``JOBRUNNER_*`` variables, then explicit overrides.
    ``flags``: the command-line flag each override was given with (``{"port": "--port"}``),
    for a sentence about its value."""
    values: dict[str, Any] = {}
    config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            values.update(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file {path} cannot be read: {exc}") from None
        _refuse_unknown(values, path)
        # A job-types file named relative to the config file is relative to that file. (One
        # that is no text is left for the type check to name.)
        if isinstance(values.get("job_types_file"), str):
            values["job_types_file"] = str(path.parent / values["job_types_file"])
    # Where each value came from, for a sentence about it.
    sources: dict[str, str] = dict.fromkeys(values, f"config file {config_file}")
    for name, variable in _setting_variables().items():
        raw = os.environ.get(variable)
        # A Service's address in the port's place is no port: the setting keeps its value (and
        # ignored_service_links says so). One an operator sets in the pod spec overrides it.
        if raw is not None and not _is_link_address(variable, raw):
            values[name] = raw
            sources[name] = variable
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    for name in given:
        # A flag's value is told with the flag; a caller's own as ``name = value``.
        if flags and name in flags:
            sources[name] = flags[name]
        else:
            sources.pop(name, None)
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(refused(exc, values, sources, setting_shape)) from None
    # Told as written.
    capped = {name: values.get(name, value) for name, value in capped_values(settings).items()}
    if "stream_read_timeout_seconds" not in values:
        # Not configured: kept below a keep-alive an operator shortened to 5 s or less, who
        # would otherwise be refused at start for a setting never set.
        settings = settings.replaced(
            stream_read_timeout_seconds=min(
                STREAM_READ_TIMEOUT_SECONDS, settings.sse_keepalive_seconds / 2
            ),
        )
    _check_stream_read_timeout(settings, values, sources)
    settings.__dict__["_capped"] = capped
    settings.__dict__["_sources"] = sources
    return settings


def sources_of(settings: Settings) -> dict[str, str]:
    """Where ``load_settings`` found each value it was given: a variable, ``config file
    <path>`` or a flag (for ``settingsrefusal.written``), and where ``Settings.replaced`` was
    told its changes came from. Empty for settings made otherwise."""
    sources: dict[str, str] = settings.__dict__.get("_sources", {})
    return sources


def capped_values(settings: Settings) -> dict[str, Any]:
    """The values above a ``CAPPED`` setting's bound, which ``settings`` holds the bound in
    place of, by the setting's name."""
    capped: dict[str, Any] = settings.__dict__.get("_capped", {})
    return capped


def capped_settings(settings: Settings) -> list[str]:
    """A warning for each value taken as its setting's largest (``CAPPED``): where it was
    written, as written, and what is used instead."""
    sources = sources_of(settings)
    return [
        f"{written(name, value, sources.get(name), 'is above the largest value there is')}: "
        f"{getattr(settings, name)} is used instead ({CAPPED[name]}; README, Upgrading)"
        for name, value in capped_values(settings).items()
    ]


def setting_shape(name: str) -> Shape:
    """What setting ``name`` takes, for a sentence about a value of it."""
    field = next(f for f in msgspec.structs.fields(Settings) if f.name == name)
    range_ = BOUNDS[name].words() if name in BOUNDS else ""
    return Shape(name, field.type, field.default, range_, _FORMS.get(name, ""))


def _takes(name: str) -> str:
    return what_it_takes(setting_shape(name))


# Text settings of a form of their own.
_FORMS = {
    "log_format": "one of " + ", ".join(LOG_FORMATS),
    "log_level": "one of " + ", ".join(LOG_LEVELS),
    "metrics_address": "host:port, such as 127.0.0.1:9101",
    "metrics_peers": "name=http://host:port, comma-separated, such as runner=http://127.0.0.1:9102",
}


def _check_stream_read_timeout(
    settings: Settings, values: dict[str, Any], sources: dict[str, str]
) -> None:
    """A configuration whose stream reads may outlast a keep-alive's interval stops the
    service, naming where both were set. Checked here, on what an operator configured, rather
    than in ``__post_init__``: tests shorten the keep-alive far below the read bound, whose
    length they do not need. (Not configured, the bound is below the keep-alive.)"""
    keepalive = settings.sse_keepalive_seconds
    if settings.stream_read_timeout_seconds < keepalive:
        return
    name = "stream_read_timeout_seconds"
    where = sources.get("sse_keepalive_seconds")
    if "sse_keepalive_seconds" not in values:
        where = "its default"
    keepalive_said = f"sse_keepalive_seconds = {keepalive:g}" + (f" ({where})" if where else "")
    said = written(name, values[name], sources.get(name), f"is not below {keepalive_said}")
    raise SettingsError(
        f"{said}: a stream waiting on a read of the read models sends no keep-alive meanwhile, "
        f"so {name} takes a number of seconds below the keep-alive's"
    )
