"""bench.fanout_cost's figures per unit: none from a hand-over count that did not move."""

from __future__ import annotations

from typing import Any

from bench.fanout_cost import per_unit, summary


def row(hand_overs: int, client_deliveries: int) -> dict[str, Any]:
    return {
        "jobs": 2,
        "clients": 4,
        "lines_per_client": 1000,
        "lines_lost": 0,
        "clients_complete": 4,
        "duplicates": 0,
        "gaps": 0,
        "p99_ms": 10.0,
        "median_ms": 5.0,
        "in_jetstream": {"messages": 200, "p99_ms": 5.0, "median_ms": 2.0, "lines_per_message": 10},
        "api_hand_overs": {"hand_overs": hand_overs, "client_deliveries": client_deliveries},
        "cpu_us_per_line": {"api": 20.0, "runner": 15.0},
    }


def test_the_apis_cpu_is_divided_by_its_hand_overs_and_deliveries() -> None:
    """2,000 lines at 20 µs of the API each over 100 hand-overs is 400 µs a hand-over."""
    cost = per_unit(row(hand_overs=100, client_deliveries=200))
    assert cost["api_us_per_hand_over"] == 400.0
    assert cost["api_us_per_client_delivery"] == 200.0
    assert "hand_overs_unchanged" not in cost


def test_no_hand_over_counted_while_lines_were_delivered_is_flagged_without_figures() -> None:
    """A tree whose /metrics does not count hand-overs (or a count not read) shows 0 hand-overs
    for lines its clients got: the run says so and gives no figure a hand-over or a delivery."""
    results: dict[str, Any] = {"load_at_start": 1.0, "fanout": row(0, 0)}
    results["cost"] = per_unit(results["fanout"])
    assert results["cost"]["hand_overs_unchanged"] is True
    assert "api_us_per_hand_over" not in results["cost"]
    assert "api_us_per_client_delivery" not in results["cost"]
    text = summary(results)
    assert "no change in the API's hand-over counts" in text
    assert "a client delivery" not in text
