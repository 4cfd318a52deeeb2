"""The uploader with an event history: delivery never waits for the history, a delivered file
stays in the spool until the history releases it, and after a restart a delivered file that was
still waiting is not delivered (or listed for a digest) again.

The history here is a stand-in that records releases and removes only when told: what is under
test is the uploader's side of the hand-over (the real history runs in test_history.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import trio

from trailseal import _core
from trailseal.config import TrailConfig
from trailseal.delivery import uploader
from trailseal.delivery.destination import open_destination


class LaggingHistory:
    def __init__(self) -> None:
        self.released: list[tuple[str, int, Callable[[], None]]] = []

    def release(self, trail: str, seq: int, remove: Callable[[], None]) -> None:
        self.released.append((trail, seq, remove))


def _sealed_core(spool: Path, files: int) -> _core.Core:
    core = _core.Core(str(spool), ["t"], account_id="123456789012", region="test-1")
    for i in range(files):
        line = json.dumps({"eventID": f"e{i}", "eventName": "X", "eventSource": "s"}) + "\n"
        data = line.encode()
        core.process(data, [(len(data), "test", None, 0)])
        core.sync()
        core.seal("t", "123456789012", "test-1", f"AWSLogs/k{i}.json.zst")
    return core


def _run_uploader(
    core: _core.Core, trail: TrailConfig, state_dir: Path, history: LaggingHistory | None
) -> None:
    destination = open_destination(trail.destination, host_id="h", trail=trail)

    async def main() -> None:
        send, receive = trio.open_memory_channel[_core.SealedFile](10)
        await send.aclose()  # only the spool's leftovers
        with trio.fail_after(30):
            await uploader.run(
                core=core,
                trail=trail,
                destination=destination,
                state_dir=state_dir,
                sealed=receive,
                history=history,
            )

    trio.run(main)


def test_delivered_files_wait_for_the_history_and_are_not_delivered_twice(
    tmp_path: Path,
) -> None:
    bucket = tmp_path / "bucket"
    trail = TrailConfig(name="t", destination=f"file://{bucket}")
    state_dir = tmp_path / "state"
    core = _sealed_core(tmp_path / "spool", 3)
    history = LaggingHistory()
    _run_uploader(core, trail, state_dir, history)
    # all three delivered without waiting; none removed yet
    assert sorted(p.name for p in bucket.rglob("*.json.zst")) == [
        "k0.json.zst",
        "k1.json.zst",
        "k2.json.zst",
    ]
    assert [seq for _, seq, _ in history.released] == [1, 2, 3]
    assert len(core.sealed_files("t")) == 3
    delivered = (state_dir / "delivered.jsonl").read_text().splitlines()
    assert len(delivered) == 3
    # the history indexed the first one: it leaves the spool
    history.released[0][2]()
    assert [f.seq for f in core.sealed_files("t")] == [2, 3]

    # a restart: the two still waiting are handed to the history again, not re-delivered
    (bucket / "AWSLogs" / "k1.json.zst").unlink()  # a second put would bring it back
    history = LaggingHistory()
    _run_uploader(core, trail, state_dir, history)
    assert [seq for _, seq, _ in history.released] == [2, 3]
    assert not (bucket / "AWSLogs" / "k1.json.zst").exists()
    assert (state_dir / "delivered.jsonl").read_text().splitlines() == delivered
    for _, _, remove in history.released:
        remove()
    assert core.sealed_files("t") == []

    # without a history, files left waiting are removed at start, still not re-delivered
    core2 = _sealed_core(tmp_path / "spool2", 1)
    state2 = tmp_path / "state2"
    _run_uploader(core2, trail, state2, LaggingHistory())
    (bucket / "AWSLogs" / "k0.json.zst").unlink()
    _run_uploader(core2, trail, state2, None)
    assert core2.sealed_files("t") == []
    assert not (bucket / "AWSLogs" / "k0.json.zst").exists()
