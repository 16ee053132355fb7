"""The throughput row's SSE count: met only when the client got every line once, in order, up
to the job's end. Before session 40 the row was ✅ with 277,071 lines missing (the API's reader
lost them under load), and a stream that lost its last lines before ``done`` showed 0 gaps."""

from __future__ import annotations

from typing import Any

from bench import scenarios
from bench.__main__ import rows
from bench.sse import SseClient


def throughput(**changes: Any) -> dict[str, Any]:
    result = {
        "job_id": "j",
        "lines": 1_000_000,
        "sse_lines_received": 1_000_000,
        "gaps": 0,
        "duplicates": 0,
        "missing_at_end": 0,
        "ended": "done",
        "seconds": {"sse": 5.0},
        "lines_per_s": {"sse": 200_000},
        "peak_rss_mib": {"runner": 60.0, "projector": 120.0, "api": 150.0},
        "runner_rss_mib_start_end": [47.0, 59.0],
    }
    return result | changes


def sse_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in rows({"throughput": result}) if row["name"].startswith("3c.")]


def test_every_line_once_up_to_done_is_met() -> None:
    speed, count = sse_rows(throughput())
    assert speed["met"]
    assert count["met"]
    assert count["result"] == (
        "1,000,000 of 1,000,000 lines; 0 gaps, 0 missing at the end, 0 duplicated; ended done"
    )


def test_lines_lost_in_the_middle_are_not_met_however_fast() -> None:
    """A run of session 40's start: 699,929 lines, 277,071 gaps, the rest missing at the end."""
    lost = throughput(sse_lines_received=699_929, gaps=277_071, missing_at_end=23_000)
    speed, count = sse_rows(lost)
    assert not speed["met"]
    assert not count["met"]
    assert "277,071 gaps, 23,000 missing at the end" in count["result"]


def test_lines_lost_before_done_without_a_gap_are_not_met() -> None:
    """The lines after 694,819 never came, then ``done``: no gap, since none followed."""
    lost = throughput(sse_lines_received=694_819, missing_at_end=305_181)
    assert not scenarios.every_line_once(lost)
    assert not any(row["met"] for row in sse_rows(lost))


def test_a_stream_cut_before_done_is_not_met() -> None:
    assert not scenarios.every_line_once(throughput(ended="closed"))


def test_a_line_twice_is_not_met() -> None:
    assert not scenarios.every_line_once(throughput(sse_lines_received=1_000_001, duplicates=1))


def test_an_older_result_without_the_new_fields_is_judged_by_its_count() -> None:
    old = throughput()
    del old["missing_at_end"], old["ended"]
    assert scenarios.every_line_once(old)
    assert not scenarios.every_line_once(old | {"sse_lines_received": 720_000, "gaps": 280_000})


async def counted(seqs_per_read: list[list[int]]) -> dict[str, Any]:
    """The bench client's count of SSE frames carrying ``seqs_per_read`` (one list a read),
    then ``done``, as the throughput row reports it."""
    client = SseClient("/x", "localhost", 1)
    client.record_delays = False
    for seqs in seqs_per_read:
        frames = b"".join(b'id: %d\ndata: {"seq":%d,"line":"x t=1.0"}\n\n' % (s, s) for s in seqs)
        client._scan(frames, 0.0)
    client._scan(b"event: done\ndata: {}\n\n", 0.0)
    lines = max(seq for seqs in seqs_per_read for seq in seqs)
    return throughput(
        lines=lines,
        sse_lines_received=client.lines,
        gaps=client.gaps,
        duplicates=client.duplicates,
        missing_at_end=lines - (client.next_seq - 1),
        ended=client.ended,
    )


async def test_a_line_twice_hiding_a_lost_one_in_the_same_read_is_counted() -> None:
    """1, 2, 3, 3, 5: the first, the last and the count are those of 1 to 5."""
    result = await counted([[1, 2, 3, 3, 5]])
    assert (result["gaps"], result["duplicates"]) == (1, 1)
    assert not scenarios.every_line_once(result)


async def test_every_line_in_order_across_reads_is_counted_once() -> None:
    result = await counted([[1, 2], [3], [4, 5, 6]])
    assert (result["sse_lines_received"], result["gaps"], result["duplicates"]) == (6, 0, 0)
    assert scenarios.every_line_once(result)


def test_a_stream_that_timed_out_before_done_is_a_row_not_met() -> None:
    """The bench gives up on a stream that never sends ``done``: its row says so."""
    stuck = throughput(ended="timed out", lines_per_s={})
    speed, count = sse_rows(stuck)
    assert not speed["met"]
    assert speed["result"] == "—"
    assert not count["met"]
    assert count["result"].endswith("ended timed out")
