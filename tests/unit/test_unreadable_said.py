"""A lock bucket key holding what cannot be read is said again now and then while it stays (a
value put by hand never expires), not once per process nor once per delivery."""

from __future__ import annotations

import pytest

from jobrunner.common import slots
from jobrunner.common.slots import Unreadable


def test_said_at_first_then_again_once_the_interval_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said = Unreadable()
    assert said.due("slot.printer")
    assert not said.due("slot.printer")  # met again within the interval: quiet
    assert said.due("slot.plotter")  # each key on its own
    monkeypatch.setattr(slots, "UNREADABLE_SAID_EVERY", 0.0)  # the interval has passed
    assert said.due("slot.printer")


def test_a_key_readable_again_is_said_at_once_when_it_is_not_any_more() -> None:
    said = Unreadable()
    assert said.due("slot.printer")
    said.readable("slot.printer")
    assert said.due("slot.printer")
