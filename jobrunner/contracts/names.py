"""Subject, stream, consumer and bucket names: defined here and nowhere else.

Every name takes a prefix so that several installations (and every test) can share one NATS
server without seeing each other.

Subject hierarchy, for one job ``<id>``::

    <prefix>.job.<id>.requested   JobRequested
    <prefix>.job.<id>.cancel      CancelRequested
    <prefix>.job.<id>.status      StatusChanged
    <prefix>.job.<id>.lines       LineLogged
    <prefix>.job.<id>.progress    ProgressReported
    <prefix>.job.<id>.archived    JobArchived
    <prefix>.job.<id>.webhook     WebhookAttempted
    <prefix>.job.<id>.artifact    ArtifactStored

and for one batch ``<id>``::

    <prefix>.batch.<id>.requested BatchRequested
    <prefix>.batch.<id>.sealed    BatchSealed
    <prefix>.batch.<id>.restarted BatchRestarted
    <prefix>.batch.<id>.failed    BatchFailed
    <prefix>.batch.<id>.archived  BatchArchived

Filters: ``<prefix>.>`` is every event; ``<prefix>.job.<id>.>`` one job;
``<prefix>.job.*.status`` every status change; ``<prefix>.batch.>`` every batch event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jobrunner.contracts import events

# \Z, not $: "$" also matches before a final line break, which no subject may hold.
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")

KIND_BY_EVENT: dict[type[events.Event] | type[events.BatchEvent], str] = {
    events.JobRequested: "requested",
    events.JobArchived: "archived",
    events.CancelRequested: "cancel",
    events.StatusChanged: "status",
    events.LineLogged: "lines",
    events.ProgressReported: "progress",
    events.WebhookAttempted: "webhook",
    events.ArtifactStored: "artifact",
    events.BatchRequested: "requested",
    events.BatchSealed: "sealed",
    events.BatchRestarted: "restarted",
    events.BatchFailed: "failed",
    events.BatchArchived: "archived",
}


@dataclass(frozen=True)
class Names:
    prefix: str = "jobrunner"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r} must be 1-32 of A-Z a-z 0-9 _ -")

    # --- the event stream (the source of truth)
    @property
    def stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    # The key of the stream's metadata that records the contract version of its events
    # (events.CONTRACT_VERSION): the highest of any writer.
    contract_metadata_key = "jobrunner_contract"

    @property
    def all_subjects(self) -> str:
        """Every event (jobs and batches); the stream holds exactly these subjects."""
        return f"{self.prefix}.>"

    def subject(self, event: events.Event | events.BatchEvent) -> str:
        kind = KIND_BY_EVENT[type(event)]
        if isinstance(event, events.BatchEvent):
            return f"{self.prefix}.batch.{event.batch_id}.{kind}"
        return f"{self.prefix}.job.{event.job_id}.{kind}"

    @property
    def job_events(self) -> str:
        """Every job event (no batch events)."""
        return f"{self.prefix}.job.>"

    @property
    def batch_events(self) -> str:
        """Every batch event."""
        return f"{self.prefix}.batch.>"

    def batch_subjects(self, batch_id: str) -> str:
        return f"{self.prefix}.batch.{batch_id}.>"

    def batch_kind_subject(self, batch_id: str, kind: str) -> str:
        return f"{self.prefix}.batch.{batch_id}.{kind}"

    def job_subjects(self, job_id: str) -> str:
        return f"{self.prefix}.job.{job_id}.>"

    def kind_subjects(self, kind: str) -> str:
        return f"{self.prefix}.job.*.{kind}"

    def job_kind_subject(self, job_id: str, kind: str) -> str:
        return f"{self.prefix}.job.{job_id}.{kind}"

    # --- durable consumers
    @property
    def runner_consumer(self) -> str:
        return f"{self.prefix}_runner"

    @property
    def projector_consumer(self) -> str:
        return f"{self.prefix}_projector"

    @property
    def notifier_consumer(self) -> str:
        """Shared by every notifier: each job's end is handled by one of them."""
        return f"{self.prefix}_notifier"

    # --- key/value buckets
    @property
    def locks_bucket(self) -> str:
        """Slot leases: one key per lock slot (or per lock-free job), with a per-key TTL."""
        return f"{self.prefix}_locks"

    @property
    def tokens_bucket(self) -> str:
        """API tokens (hashes only) and the session signing key, shared by every API instance."""
        return f"{self.prefix}_tokens"

    @property
    def runners_bucket(self) -> str:
        """Runner heartbeats: one key per live runner, gone once it stops writing (bucket TTL)."""
        return f"{self.prefix}_runners"

    @property
    def idempotency_bucket(self) -> str:
        """Idempotency-Key records: which batch a key made, and a hash of the request it had."""
        return f"{self.prefix}_idempotency"

    @property
    def artifact_purges_bucket(self) -> str:
        """Pending purges of replaced or unserved artifact content: one key per nuid, taken up
        by every API's sweep (artifactpurges)."""
        return f"{self.prefix}_artifact_purges"

    # --- object stores
    @property
    def artifacts_bucket(self) -> str:
        """Job artifacts: one object per file, named ``<job_id>/<name>``."""
        return f"{self.prefix}_artifacts"

    @staticmethod
    def artifact_object(job_id: str, name: str) -> str:
        return f"{job_id}/{name}"

    # --- plain NATS notifications (not persisted; outside ``<prefix>.>``, the stream's subjects)
    @property
    def projected_subject(self) -> str:
        """The projector announces the stream sequence it has committed up to."""
        return f"_jobrunner.{self.prefix}.projector.applied"

    def external_reported_subject(self, job_id: str) -> str:
        """The API says an external job's worker reported (a sign of life, even when the report
        carried nothing to store); the runner holding the job counts its silence from it."""
        return f"_jobrunner.{self.prefix}.external.{job_id}.reported"

    def api_probe_subject(self, process_id: str) -> str:
        """One API process's probe of NATS: it subscribes here and publishes to itself, a round
        trip through the server that tells whether NATS answers (api/natswatch.py). Its own
        subject per process (``process_id``, a nuid), so no other process's probe is heard."""
        return f"_jobrunner.{self.prefix}.api.probe.{process_id}"
