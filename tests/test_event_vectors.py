"""The shared event vectors (tests/vectors/events.json) through the built module.

Each case is one line run through ``Core.process`` with the vectors' context (account
111122223333, region us-east-1, no receipt, received at 1767225600 s); an accepted line's
canonical bytes are read back from the open segment it was appended to.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import zstandard

from trailseal import _core

VECTORS = Path(__file__).parent / "vectors" / "events.json"
RECEIVED_MS = 1767225600 * 1000
PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"


def _cases() -> list[dict[str, Any]]:
    if not VECTORS.exists():
        return []
    cases: list[dict[str, Any]] = json.loads(VECTORS.read_text())
    return cases


def _line(case: dict[str, Any]) -> bytes:
    if "line_hex" in case:
        return bytes.fromhex(case["line_hex"])
    line: str = case["line"]
    return line.encode()


def _last_event(path: str) -> bytes:
    with open(path, "rb") as f:
        content = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    return content.rsplit(b"\n", 1)[-1]


def _with_placeholder_id(event: bytes) -> bytes:
    """Replace a generated UUID v4 eventID by the vectors' placeholder (after checking it)."""
    parsed = json.loads(event)
    try:
        generated = uuid.UUID(parsed["eventID"])
    except ValueError:
        return event
    if generated.version != 4 or str(generated) != parsed["eventID"]:
        return event
    return event.replace(parsed["eventID"].encode(), PLACEHOLDER_ID.encode())


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> _core.Core:
    # "t" takes management events (the default selectors), "other" network activity events;
    # a data event is taken only by a resource selector (see test_event_vector)
    other = {
        "advanced_event_selectors": [
            {
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["NetworkActivity"]},
                    {"Field": "eventSource", "NotEquals": ["-"]},
                ]
            }
        ]
    }
    return _core.Core(
        str(tmp_path_factory.mktemp("vectors")),
        ["t", _core.TrailSpec("other", selectors_json=json.dumps(other))],
        account_id="111122223333",
        region="us-east-1",
        add_receipt=False,
        dedup_capacity=0,  # many cases share an eventID
    )


@pytest.mark.skipif(not VECTORS.exists(), reason="tests/vectors/events.json not written yet")
@pytest.mark.parametrize("case", _cases(), ids=lambda c: str(c["name"]))
def test_event_vector(core: _core.Core, case: dict[str, Any]) -> None:
    line = _line(case)
    assert b"\n" not in line
    result = core.process(line + b"\n", [(len(line) + 1, "unix:uid=0,pid=1", None, RECEIVED_MS)])
    expect = case["expect"]
    assert result.lines == [1]
    if "canonical" in expect:
        assert result.errors == []
        canonical = json.loads(expect["canonical"])
        if canonical["eventCategory"] == "Data" and "resources" not in canonical:
            # valid, but no selector CloudTrail allows takes a data event without resources
            assert (result.accepted, result.unrouted) == (0, 1)
            return
        assert result.accepted == 1
        # The event went to the stream of its own account/region: the last event of one of the
        # open segments is the one just appended.
        found = [_last_event(s.path) for s in core.open_segments()]
        if expect.get("generated_event_id"):
            found = [_with_placeholder_id(f) for f in found]
        assert expect["canonical"].encode() in found, found
    else:
        assert result.accepted == 0
        assert result.rejected == 1
        ((part, lineno, code, message),) = result.errors
        assert (part, lineno) == (0, 1)
        assert code == expect["code"], message
        assert expect["message_contains"] in message
