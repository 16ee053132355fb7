"""The noisy neighbour's hop trace (bench/noisy_hops.py): its probes still fit the tree, and its
report says which step a line's time went to and whether the thread ran or waited for a core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import noisy_hops


def test_the_probes_apply_to_the_committed_tree_and_compile(tmp_path: Path) -> None:
    """Every probe's anchor is in the tree once (moved code stops the trace, with its name),
    and the probed files, the follower's second API included, are still Python."""
    tree = noisy_hops.probed_tree(tmp_path / "tree", apart=True)
    probed = {name for name, _, _ in noisy_hops.PROBES + noisy_hops.FOLLOWER_APART}
    for name in [*probed, "jobrunner/hopprobe.py"]:
        compile((tree / name).read_text(), name, "exec")
    assert (
        "hopprobe.record('api_ssewrite', chunk)"
        in (tree / "jobrunner/services/api/directwrite.py").read_text()
    )


def write_hop(
    directory: Path, hop: str, rows: list[tuple[str, float, str, tuple[int, int]]]
) -> None:
    """``rows``: (line key, time, extra fields, the thread's (CPU ns, run delay ns))."""
    text = "".join(
        f"{key} {at:.6f} {extra} | {cpu} {delay}\n" for key, at, extra, (cpu, delay) in rows
    )
    (directory / f"{hop}.100").write_text(text)


def test_a_step_spent_waiting_for_a_core_is_reported_as_run_delay(tmp_path: Path) -> None:
    """Ten lines alone, then ten beside a flood where the API's parse came 20 ms after the line
    was stored and its thread waited for a core for 18 of them: the step and its split show it,
    and the viewer's delays are matched by line number (two lines share a stamp)."""
    lines = {"alone": (100.0, 1.0), "beside": (200.0, 20.0)}  # first stamp, API step (ms)
    hops: dict[str, list[tuple[str, float, str, tuple[int, int]]]] = {}
    for start, step_ms in lines.values():
        for n in range(1, 11):
            printed = start + (n - 1) * 0.01 if n != 2 else start  # line 2: line 1's stamp
            key = f"{printed:.6f}#{n}"
            stored = printed + 0.002
            parsed = stored + step_ms / 1e3
            api_before = (1_000_000 * n, 5_000_000 * n)
            waited = int(step_ms * 0.9 * 1e6)  # 90 % of the step waiting for a core
            api_after = (api_before[0] + int(step_ms * 0.1 * 1e6), api_before[1] + waited)
            extra = f"{api_before[0]} {api_before[1]} 0 0"
            hops.setdefault("bench_stored", []).append((key, stored, extra, (0, 0)))
            hops.setdefault("api_parsed", []).append((key, parsed, "", api_after))
            hops.setdefault("api_ssewrite", []).append((key, parsed + 0.0001, "", api_after))
        delays = [0.003 + step_ms / 1e3 + 0.0002 + n / 1e6 for n in range(1, 11)]
        (tmp_path / f"viewer.{start:.3f}").write_text(json.dumps(delays))
    for hop, rows in hops.items():
        write_hop(tmp_path, hop, rows)

    trace = noisy_hops.Trace(tmp_path)
    assert [len(run) for run in trace.runs.values()] == [10, 10]
    line_two = trace.runs["beside"][1]
    assert line_two == "200.000000#2"
    viewer_at = trace.at[line_two]["viewer"][0]
    assert viewer_at - 200.0 == pytest.approx(0.003 + 0.020 + 0.0002 + 2 / 1e6)

    report = noisy_hops.report(trace)
    beside = report.split("beside")[1]
    row = next(line for line in beside.splitlines() if line.startswith("| stored → parsed"))
    assert "| api | 20.00/20.00/20.00 |" in row
    assert "10 % / 90 % / 0 %" in row
