"""The browser's checks of imported parameter rows (static/js/paramrows.js), run in Node.

What a user sees: a CSV or JSON file is read the way a spreadsheet wrote it, and a row the
browser lets through is one the API accepts (the same codes for the same mistakes).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobrunner.common.jobtypes import ParameterError, load_job_types, validate_parameters
from jobrunner.common.settings import DEFAULT_JOB_TYPES
from jobrunner.services.api.routes.pages import parameter_schemas

NODE = shutil.which("node")
CLI = Path(__file__).resolve().parent.parent / "tools" / "paramrows_cli.mjs"
TYPES = load_job_types(DEFAULT_JOB_TYPES)
SCHEMAS = parameter_schemas(TYPES)

pytestmark = pytest.mark.skipif(NODE is None, reason="needs node to run the browser module")


class Node:
    def __init__(self) -> None:
        assert NODE is not None
        self.process = subprocess.Popen(
            [NODE, str(CLI)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        assert "crash" not in answer, answer["crash"]
        return answer


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    runner = Node()
    yield runner
    runner.process.kill()
    runner.process.wait()


NAMES = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
# No lone CR: Python's writer leaves it unquoted with a "\n" terminator, which no reader can undo.
CELL_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r")
CELLS = st.text(CELL_CHARS, max_size=12)
# What JavaScript's trim() removes (Python's str.strip also removes \x1c-\x1f and \x85).
JS_WHITESPACE = set(
    "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)


def js_blank(cell: str) -> bool:
    """Whether the browser takes the cell for empty (a row of only such cells is no row)."""
    return all(ch in JS_WHITESPACE for ch in cell)


HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPO
@given(
    header=st.lists(NAMES, min_size=2, max_size=4, unique=True),
    data=st.data(),
    delimiter=st.sampled_from([",", ";", "\t"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_csv_written_by_a_spreadsheet_reads_back_cell_for_cell(
    node: Node, header: list[str], data: Any, delimiter: str, terminator: str, quoting: int
) -> None:
    """Commas, semicolons, quotes and line breaks inside cells come back exactly as written."""
    rows = data.draw(st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header))))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=terminator, quoting=quoting)
    writer.writerows([header, *rows])
    expected = [header] + [r for r in rows if not all(js_blank(c) for c in r)]
    assert node.ask(op="csv", text=out.getvalue())["ok"] == expected


@HYPO
@given(text=st.text(max_size=200), name=st.sampled_from(["rows.csv", "rows.json", "rows.txt"]))
def test_any_file_is_rows_or_one_clear_problem(node: Node, text: str, name: str) -> None:
    """Whatever a file holds, the import answers rows with their errors or names the problem."""
    answer = node.ask(op="file", name=name, text=text, type="scraper", schema=SCHEMAS["scraper"])
    if "problem" in answer:
        assert answer["problem"] in {
            "UNCLOSED_QUOTE",
            "EMPTY_FILE",
            "BAD_HEADER",
            "INVALID_JSON",
            "TOO_MANY_ROWS",
        }
        assert answer["message"]
    else:
        for row in answer["ok"]:
            assert isinstance(row["source"], int)
            assert all({"field", "code", "message"} <= set(e) for e in row["errors"])


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.sampled_from(["", "-x", "0.5", "12345", "abc", "none", "low", "serper", "a\nb", "1" * 300])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)


def api_errors(job_type: str, given: dict[str, Any]) -> set[tuple[str, str]]:
    try:
        validate_parameters(TYPES[job_type], given)
    except ParameterError as error:
        return {(e.field, e.code) for e in error.errors}
    return set()


@HYPO
@given(data=st.data(), job_type=st.sampled_from(sorted(TYPES)))
def test_browser_check_agrees_with_the_api(node: Node, data: Any, job_type: str) -> None:
    """For any parameters, the browser flags the same fields with the same codes as the API."""
    names = st.sampled_from([*TYPES[job_type].parameters, "unknown_one"])
    given_ = data.draw(st.dictionaries(names, VALUES, max_size=5))
    answer = node.ask(op="check", type=job_type, schema=SCHEMAS[job_type], given=given_)
    assert {(e["field"], e["code"]) for e in answer["ok"]} == api_errors(job_type, given_)


def test_csv_cells_take_their_parameter_types(node: Node) -> None:
    """Numbers, yes/no and choice lists in a German spreadsheet's CSV become typed values."""
    text = "max_items;headless;confidence_filter\n5;ja;none,low\n;nein;\n"
    schema = {
        "max_items": {"type": "integer"},
        "headless": {"type": "bool"},
        "confidence_filter": {
            "type": "multi_enum",
            "choices": [{"value": "none"}, {"value": "low"}],
        },
    }
    rows = node.ask(op="file", name="x.csv", text=text, type="t", schema=schema)["ok"]
    assert rows[0]["parameters"] == {
        "max_items": 5,
        "headless": True,
        "confidence_filter": ["none", "low"],
    }
    assert rows[1]["parameters"] == {"headless": False}
    assert [r["source"] for r in rows] == [2, 3]


def test_a_row_with_too_many_cells_is_named(node: Node) -> None:
    """A row whose cell count differs from the header is marked at that row, not shifted."""
    schema = {"a": {"type": "string"}, "b": {"type": "string"}}
    rows = node.ask(op="file", name="x.csv", text="a,b\n1,2\n1,2,3\n", type="t", schema=schema)
    assert rows["ok"][0]["errors"] == []
    assert rows["ok"][1]["errors"][0]["code"] == "INVALID_ROW"


def test_a_bad_plz_is_told_as_the_api_tells_it(node: Node) -> None:
    """A PLZ that is not up to five digits: the browser's field error is the API's, the job
    type's words for the pattern first. (Before, the browser showed only the bare regex.)"""
    given_ = {"plz_filter": "4x"}
    answer = node.ask(op="check", type="scraper", schema=SCHEMAS["scraper"], given=given_)
    try:
        validate_parameters(TYPES["scraper"], given_)
    except ParameterError as error:
        api = [(e.code, e.message) for e in error.errors]
    assert [(e["code"], e["message"]) for e in answer["ok"]] == api
    assert api[0][1].startswith("must be bis zu fünf Ziffern"), api
