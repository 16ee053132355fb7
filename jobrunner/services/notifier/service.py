"""The notifier service: each ended job's webhooks, from a durable consumer shared by every
notifier (any number of them, on any machines: each job's end goes to one of them).

At-least-once: the end of a job is acknowledged only once its webhooks are delivered or given
up. While it works on one (retry waits included) the notifier tells JetStream it is still at it
(``in_progress``); a notifier that dies stops saying so, and after ``notifier_ack_wait_seconds``
the end is handed to another notifier, which goes on from the last attempt (``delivery``).

A notifier started for the first time on an installation delivers for jobs that ended within the
last ``webhook_retry_seconds`` (the consumer's start), not for its whole history.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from datetime import timedelta
from typing import TypeVar

import msgspec
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from jobrunner.common import ackinbox, eventstore, metrics, reconfigure, retry, stopping
from jobrunner.common.jobtypes import JobType, load_job_types
from jobrunner.common.lastevent import newest_readable
from jobrunner.common.settings import Settings, SettingsError
from jobrunner.common.subscription import handle_each, last_stored
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.notifier.addresses import AddressPolicy
from jobrunner.services.notifier.delivery import JobDelivery, RetryPolicy, resume_after
from jobrunner.services.notifier.sender import Sender
from jobrunner.services.notifier.targets import targets_of

log = structlog.get_logger()

T = TypeVar("T", bound=events.Event)


class Notifier:
    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings = settings
        # Set when its run ends: the whole stop's deadline, the connection's close included.
        self.stop_deadline: stopping.Deadline | None = None
        self.names = Names(settings.prefix)
        self.js = nc.jetstream()
        # Its reads (every ended job's request) through the connection's ack inbox: the
        # request js.get_last_msg sends, for less CPU (``subscription.last_stored``).
        self._acks = ackinbox.of(nc)
        self.job_types: dict[str, JobType] = load_job_types(settings.job_types_file)
        try:
            policy = AddressPolicy.parse(settings.webhook_allow_hosts)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        try:
            self.sender = Sender(
                policy,
                settings.webhook_connect_timeout_seconds,
                settings.webhook_timeout_seconds,
                settings.webhook_tls_ca_file,
            )
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"webhook_tls_ca_file {settings.webhook_tls_ca_file!r} cannot be used: {exc}"
            ) from None
        self.retry = RetryPolicy(
            settings.webhook_retry_seconds,
            settings.webhook_first_retry_seconds,
            settings.webhook_longest_retry_seconds,
        )
        self.capacity = asyncio.Semaphore(settings.notifier_max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._handling: set[str] = set()

    def consumer_config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            filter_subject=self.names.kind_subjects("status"),
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.notifier_ack_wait_seconds,
            max_ack_pending=10_000,
            max_deliver=-1,
            # Used only when the consumer is created (the first notifier ever): not the whole
            # history, only ends still inside the retry window.
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=events.utcnow() - timedelta(seconds=self.settings.webhook_retry_seconds),
        )

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        config = self.consumer_config()
        while True:
            try:
                return await eventstore.durable_pull_subscription(
                    self.js,
                    self.names.kind_subjects("status"),
                    self.names.stream,
                    self.names.notifier_consumer,
                    config,
                )
            except nats.js.errors.APIError as refused:
                # Another notifier created it at the same moment: bind to theirs. nats-py's
                # create is a create-or-update, and the server refuses it as an update of the
                # start time (a 500, err_code 10012, on 2.15), not as a conflict. Any other
                # refusal (the consumer not there) is for good, or for the caller's retry.
                try:
                    await retry.start_context(self.js).consumer_info(
                        self.names.stream, self.names.notifier_consumer
                    )
                except nats.js.errors.NotFoundError:
                    raise refused from None
                await asyncio.sleep(0.1)

    async def open_consumer(self) -> JetStreamContext.PullSubscription:
        """The notifiers' shared consumer. One an earlier start left otherwise (another ack
        wait, an older version's or an operator's filter or limits) is first made what a
        notifier needs, or refused (``reconfigure.durable_consumer``)."""
        await retry.until_jetstream_ready(
            lambda: reconfigure.durable_consumer(
                self.js, self.names.stream, self.names.notifier_consumer, self.consumer_config()
            ),
            "the notifiers' consumer",
        )
        return await retry.until_jetstream_ready(self.subscribe, "the notifiers' consumer")

    async def run(self, stop: asyncio.Event) -> None:
        await eventstore.ensure_topology(self.js, self.names, self.settings)
        sub = await self.open_consumer()
        if not self.settings.webhook_secret:
            log.warning("webhook_secret is not set: webhooks go out unsigned")
        log.info("notifier started", max_concurrent=self.settings.notifier_max_concurrent)
        metrics.SERVICE_STARTED.set(1)  # after the line: `jobrunner up` shows it first
        try:
            # Every status change comes here (most are no job's end): a backlog of them is
            # taken several at once, and each status of a running job one at a time.
            await handle_each(
                sub, self.capacity, stop, lambda msg: self._handle(msg, stop), self._tasks
            )
        finally:
            # One deadline for the whole stop (run_notifier's close too): bounds that each
            # hold would add up, in series, past the supervisor's grace.
            self.stop_deadline = stopping.Deadline(self.settings.stop_seconds)
            # A handler whose publish or acknowledgement waits on a frozen NATS is left: its
            # job's end, not acknowledged, is delivered again to the next notifier.
            await stopping.wait_within(
                self._tasks,
                self.stop_deadline.keeping(eventstore.CLOSE_KEEP_SECONDS).left(),
                "webhook handlers did not end on their stop: left running",
            )
            await self.sender.close()

    async def _handle(self, msg: Msg, stop: asyncio.Event) -> None:
        keeper: asyncio.Task[None] | None = None
        # Set before the keeper's cancel: a cancel that comes while ``in_progress`` flushes is
        # swallowed (nats-py), and the keeper would say "in progress" until the process exits.
        keeper_stop = asyncio.Event()
        job_id = None
        try:
            end = codec.decode(msg.data)
            if not isinstance(end, events.StatusChanged) or not end.status.is_terminal:
                await _ack(msg)
                return
            if msg.subject != self.names.subject(end):
                # Another job's ending on this job's subject was not written by jobrunner.
                log.warning("status event of another job skipped", subject=msg.subject)
                await _ack(msg)
                return
            if end.job_id in self._handling:
                return  # delivered again while this notifier works on it: its ack will come
            job_id = end.job_id  # from here on this task owns the job's mark in _handling
            self._handling.add(job_id)
            structlog.contextvars.bind_contextvars(job_id=job_id)
            keeper = asyncio.create_task(
                self._keep_alive(msg, keeper_stop), name=f"webhook-keep-alive-{job_id}"
            )
            if await self._deliver(end, stop):
                await _ack(msg)
            else:
                # Stopping mid-retry: another notifier goes on now, not after the ack wait.
                with contextlib.suppress(Exception):
                    await msg.nak()
        except msgspec.MsgspecError:
            log.warning("undecodable status event skipped", subject=msg.subject)
            await _ack(msg)
        except Exception:
            # Not acknowledged: JetStream hands it out again after the ack wait.
            log.exception("webhook handling crashed")
        finally:
            if keeper is not None:
                # Not waited for: the keeper ends at its next turn, and a handler that waited
                # would hold its place in ``capacity`` for a publish that no longer matters.
                keeper_stop.set()
                keeper.cancel()
            if job_id is not None:
                self._handling.discard(job_id)
            structlog.contextvars.unbind_contextvars("job_id")
            self.capacity.release()

    async def _deliver(self, end: events.StatusChanged, stop: asyncio.Event) -> bool:
        request = await self._last(end.job_id, "requested", events.JobRequested)
        if request is None:
            log.warning("ended job without a request; no webhook")
            return True
        if request.webhook is None and request.attempt_of is not None:
            # A restart is a new attempt of the same work: it notifies the webhook the work was
            # requested with (its own delivery id, since it is another job).
            first = await self._last(request.attempt_of, "requested", events.JobRequested)
            if first is not None and first.webhook is not None:
                request = msgspec.structs.replace(request, webhook=first.webhook)
        targets = targets_of(
            request,
            self.job_types.get(request.job_type),
            self.settings.webhook_secret,
            os.environ,
        )
        if not targets:
            return True
        progress = await self._last(end.job_id, "progress", events.ProgressReported)
        last = await self._last(end.job_id, "webhook", events.WebhookAttempted)
        delivery = JobDelivery(self.sender, self.retry, self._publish, stop)
        return await delivery.deliver(request, end, progress, targets, resume_after(last))

    async def _last(self, job_id: str, kind: str, kind_type: type[T]) -> T | None:
        subject = self.names.job_kind_subject(job_id, kind)
        raw = await retry.until_done(
            lambda: last_stored(self._acks, self.js, self.names.stream, subject),
            f"reading {subject}",
        )
        if raw is None:
            return None
        newest = raw.seq, raw.data
        # One not written by jobrunner is skipped: a junk last attempt must not restart a
        # delivery from its first attempt, a junk request must not hide the webhook.
        found = await retry.until_done(
            # A flood past the read's bounds: the newest found (no progress, say), not a
            # refusal that would have the job's end delivered again for ever.
            lambda: newest_readable(
                self.js, self.names.stream, subject, newest, kind_type, job_id, best_effort=True
            ),
            f"reading {subject}",
        )
        return None if found is None else found[1]

    async def _publish(self, event: events.WebhookAttempted) -> None:
        await retry.until_done(
            lambda: eventstore.publish(self.js, self.names, event),
            f"WebhookAttempted {event.event_id}",
        )

    async def _keep_alive(self, msg: Msg, stop: asyncio.Event) -> None:
        """Tell JetStream this end is still being worked on, three times per ack wait, until
        ``stop``."""
        interval = self.settings.notifier_ack_wait_seconds / 3
        while True:
            await stopping.pause(stop, interval)
            if stop.is_set():
                return
            with contextlib.suppress(Exception):  # NATS away: the next one may pass
                await msg.in_progress()


async def _ack(msg: Msg) -> None:
    with contextlib.suppress(Exception):
        # Lost (NATS away): the end comes back and its last attempt says it is done.
        await msg.ack()


async def run_notifier(settings: Settings, stop: asyncio.Event) -> None:
    nc = await eventstore.connect(settings, "notifier", on_closed_for_good="exit")
    notifier = Notifier(settings, nc)
    try:
        await notifier.run(stop)
    finally:
        deadline = notifier.stop_deadline or stopping.Deadline(settings.stop_seconds)
        await eventstore.close(nc, deadline.left(eventstore.CLOSE_MOST_SECONDS))
