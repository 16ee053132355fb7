"""JetStream's answer 10158 (JSStreamDuplicateMessageConflict,
"duplicate message id is in process", HTTP 409) comes from a clustered stream
(``processClusteredInboundMsg``) when a copy of a message with the same Nats-Msg-Id is staged
and not yet applied: that first copy may still be stored. It is an ``APIError``, which
``stored_nothing`` must not call "surely stored nothing": POST /api/jobs would then take out
the queue entry of a job stored a moment later (an Idempotency-Key retry during a stall of an
R3 stream) and answer a 503 without ``job_id``."""

from __future__ import annotations

import nats.js.errors
import pytest

from jobrunner.common import ackinbox, eventstore


def test_a_copy_refused_while_the_first_is_in_process_is_not_stored_nothing() -> None:
    answer = (
        b'{"error":{"code":409,"err_code":10158,'
        b'"description":"duplicate message id is in process"}}'
    )
    # The refusal as the ack inbox raises it (read_ack decodes what the server sends).
    msg = nats.aio.msg.Msg(_client=None, subject="_INBOX.x.1", data=answer)  # type: ignore[arg-type]
    with pytest.raises(nats.js.errors.APIError) as raised:
        ackinbox.read_ack(msg)
    assert raised.value.err_code == 10158
    assert not eventstore.stored_nothing(raised.value), "the first copy may still be stored"
