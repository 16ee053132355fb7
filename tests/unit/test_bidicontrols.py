"""``bidicontrols.isolated``: a name for plain text (a page's title, an ``aria-label``) with its
own bidirectional controls dropped and exactly one isolate around it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobrunner.common import bidicontrols

CONTROLS = [chr(code) for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
# Text a name may hold, its controls often among it.
NAMES = st.text(st.one_of(st.characters(), st.sampled_from(CONTROLS)))


@given(NAMES)
def test_a_name_is_wrapped_in_one_isolate_and_keeps_no_control_of_its_own(name: str) -> None:
    shown = bidicontrols.isolated(name)
    assert shown[0] == "\u2068"
    assert shown[-1] == "\u2069"
    inside = shown[1:-1]
    assert bidicontrols.first_in(inside) is None
    assert inside == "".join(c for c in name if c not in CONTROLS)


def test_an_override_is_dropped_and_the_rest_kept_in_order() -> None:
    assert bidicontrols.isolated("invoice\u202efdp.exe") == "\u2068invoicefdp.exe\u2069"
