"""What went wrong in a fault cluster's harness (not in the product under test), kept until it is
told, once, to the test it happened during.

A cluster is a test's own, or shared by the tests of a module or a package (a fixture wider than
one test). A fault of a shared cluster is the fault of the test of that cluster which was
running when it happened. The watchdog runs on the session's one event loop, so a fault an
earlier test left behind (a service it crashed, whose restart then fails) happens only once a
later test runs the loop: a failed restart of a service that was down already when the running
test began is not that test's either. What happened while none of a shared cluster's tests ran
is left over: told at the cluster's stop (its fixture's teardown), saying so, never dropped.

A service that cannot be restarted fails every watchdog round, and a test's teardown showed one
error a round. Its failures are kept once per service, exception type and test (and whether
left over), counted; and at most ``KEPT`` of them per test (and ``KEPT`` left over), the rest
only counted: a test's own are kept however many an earlier one left. A moved API is always
kept: it moves once per start that found a stranger on its port (not every round), and its
move must reach the test's next request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from tests.tools.api_address import NotOurApi

# Distinct failed restarts (each service and cause) kept until told, per test and for the
# left-overs: more are counted, not kept.
KEPT = 20


class RestartFailed(RuntimeError):
    """The watchdog's restart of a service failed by a fault of this harness (not the service
    failing to start, which the watchdog counts and tries again)."""


class HarnessFaultsNotKept(RuntimeError):
    """More faults of this harness happened than were kept: how many, and how often."""


@dataclass
class HarnessFault:
    """One fault not yet told: the first error of its kind and how often it happened."""

    first: Exception
    # The shared cluster's test that was running when it happened; None: none was (or the
    # cluster was never shared: a test's own).
    during: str | None
    service: str | None = None  # a failed restart's service; None: an API moved off its port
    count: int = 1
    # Why it is no test's, said where it is told at last (the cluster's stop).
    left_over: str | None = None

    def key(self) -> Hashable:
        """Failures of one key are one fault, counted."""
        return (self.service, type(self.first), self.during, self.left_over)

    def told(self) -> Exception:
        """The error to raise, naming how often it happened and why it is left over."""
        if self.service is None:
            told = self.first
        else:
            times = "" if self.count == 1 else f" {self.count} times"
            told = RestartFailed(
                f"the watchdog's restart of {self.service} failed{times}: {self.first!r}"
            )
            told.__cause__ = self.first
        if self.left_over is not None:
            told.add_note(self.left_over)
        return told


class HarnessFaults:
    """The harness faults of one cluster, each with the test it happened during."""

    def __init__(self) -> None:
        self._faults: list[HarnessFault] = []
        # Per test (None: left over), the failures not kept: how often, per fault's key.
        self._not_kept: dict[str | None, Counter[Hashable]] = {}
        # Once a test began on the cluster it is shared: its faults outside its tests are left
        # over. Until then (a test's own cluster, a shared one's fixture setting it up) a fault
        # is nobody's in particular, told by whoever takes it (the test, the stop).
        self.shared = False
        self._running: str | None = None
        # The services the watchdog was to restart already when the running test began, each
        # with its last process (one started since is the test's to answer for).
        self._down_before: dict[str, object] = {}

    # --- the tests of a shared cluster
    def test_began(self, test: str, down: Mapping[str, object]) -> None:
        """``test`` runs on this (shared) cluster from now on; ``down``: its services the
        watchdog is to restart as it begins, each with its last process (their failed restarts
        are not the test's until one of them is started again)."""
        if self._running is not None:  # no test_ended for it: its faults are nobody's now
            for fault in self._faults:
                if fault.during == self._running:
                    fault.during = None
                    fault.left_over = fault.left_over or (
                        f"left over: it happened during {self._running}, which did not end "
                        "normally (its teardown never told it)"
                    )
            if unkept := self._not_kept.pop(self._running, None):
                self._not_kept.setdefault(None, Counter()).update(unkept)
        if not self.shared:
            for fault in self._faults:  # its fixture's own, while it set the cluster up
                fault.left_over = fault.left_over or (
                    "left over: it happened before this shared cluster's first test began"
                )
        self.shared = True
        self._running = test
        self._down_before = dict(down)

    def test_ended(self, test: str) -> list[Exception]:
        """The faults that happened during ``test``, which took this cluster: taken, to raise.
        For a cluster the test did not begin on (its own, made during the test): what is
        pending, not yet told."""
        if self._running == test:
            self._running = None
            self._down_before.clear()
            return self._take(test)
        if not self.shared:
            return self.take_all()
        return []

    def take_all(self) -> list[Exception]:
        """Everything not yet told, to raise at the cluster's stop (or by a test of its own)."""
        return self._take(everything=True)

    # --- what the watchdog and starts report
    def restart_failed(self, service: str, error: Exception, last_process: object) -> None:
        """The watchdog's restart of ``service`` failed with ``error`` (it will try again);
        ``last_process``: the service's last process, which exited."""
        during = self._running
        left_over = None
        if service in self._down_before and self._down_before[service] is last_process:
            left_over = (
                f"left over: {service} was down already when {during} began (an earlier test "
                "or the cluster's fixture left it so), and its restart failed since"
            )
            during = None
        elif during is None and self.shared:
            left_over = (
                "left over: it happened while none of this shared cluster's tests ran "
                "(between them, or in the fixture's own start)"
            )
        failed = HarnessFault(error, during, service, left_over=left_over)
        for fault in self._faults:
            if fault.key() == failed.key():
                fault.count += 1
                return
        if (
            sum(fault.during == during and fault.service is not None for fault in self._faults)
            < KEPT
        ):
            self._faults.append(failed)
        else:
            self._not_kept.setdefault(during, Counter())[failed.key()] += 1

    def api_moved(self, sentence: str) -> HarnessFault:
        """An API was moved off a port another program took (``sentence`` says so)."""
        left_over = None
        if self._running is None and self.shared:
            left_over = (
                "left over: it happened while none of this shared cluster's tests ran; the "
                "clients were pointed at the new port at once"
            )
        moved = HarnessFault(NotOurApi(sentence), self._running, left_over=left_over)
        self._faults.append(moved)  # always: once a start, and its test's next request says so
        return moved

    def forget(self, fault: HarnessFault) -> None:
        """``fault`` was told where it happened (the start that moved the API raised it)."""
        self._faults = [kept for kept in self._faults if kept is not fault]

    def forget_moves(self) -> None:
        """The API moves so far are no test's (the cluster's start: no client had its address)."""
        self._faults = [fault for fault in self._faults if fault.service is not None]

    def take_move(self) -> NotOurApi | None:
        """An API move during the running test (any, on a cluster never shared), to raise at
        the test's next request: its requests before may have reached the other program."""
        if self.shared and self._running is None:
            return None  # no test of ours runs: the stop tells it
        for fault in self._faults:
            if fault.service is None and fault.during == self._running:
                self.forget(fault)
                assert isinstance(fault.first, NotOurApi)
                return fault.first
        return None

    def failed_restarts(self, service: str) -> int:
        """How often the watchdog's restart of ``service`` failed, of what is not yet told
        (kept ones only). For tests of this harness: the cluster itself never asks."""
        return sum(fault.count for fault in self._faults if fault.service == service)

    def _take(self, during: str | None = None, *, everything: bool = False) -> list[Exception]:
        taken = [fault for fault in self._faults if everything or fault.during == during]
        self._faults = [fault for fault in self._faults if all(fault is not t for t in taken)]
        told = [fault.told() for fault in taken]
        for whose in list(self._not_kept) if everything else [during]:
            if not_kept := self._not_kept.pop(whose, None):
                told.append(
                    HarnessFaultsNotKept(
                        f"{len(not_kept)} more faults ({not_kept.total()} failures) were not"
                        f" kept: at most {KEPT} failed restarts (services and causes) are, per"
                        " test and left over"
                    )
                )
        return told
