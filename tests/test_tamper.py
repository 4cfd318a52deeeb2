"""One flipped bit anywhere in a delivered object makes ``trailseal validate`` fail, naming it;
and one data dir / spool serves one daemon / Core at a time.

The destination is produced for real (Core, uploader, DigestWriter; see test_validate.produce).
Flips go into the stored bytes of log files, digests and the digests' ``.metadata.json``
signature files. One known, documented limit is excused, and only where it lies: libzstd never
uses the last state update of an FSE-coded Huffman weight table, so the first two bytes of that
table's bitstream can hold a flipped bit without any change (see rust verify.rs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_validate import ACCOUNT, REGION, Produced, produce
from trailseal import _core
from trailseal.delivery.destination import METADATA_SUFFIX
from trailseal.validate import Validator

pytestmark = pytest.mark.skipif(
    not hasattr(_core, "Core"), reason="trailseal._core built without Core (rebuild with maturin)"
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Produced]:
    """One log file of three events and its digest (plus a final, empty one)."""
    root = tmp_path_factory.mktemp("tamper")
    yield produce(root, files=(3,), digest_after=1)
    shutil.rmtree(root, ignore_errors=True)


def _objects(p: Produced) -> list[tuple[Path, str]]:
    """(file, the object key validate must name) for every delivered object and metadata file."""
    out = [(p.bucket / k, k) for k in p.logs() + p.digests()]
    out += [(p.bucket / (k + METADATA_SUFFIX), k) for k in p.digests()]
    return sorted(out)


def _fse_description_bits(data: bytes) -> int:
    """Length in bits of an FSE table description (RFC 8878 §4.1.1) at the start of ``data``."""
    pos = 0

    def take(n: int, peek: bool = False) -> int:
        nonlocal pos
        v = 0
        for i in range(n):
            b = pos + i
            byte = data[b // 8] if b // 8 < len(data) else 0
            v |= ((byte >> (b % 8)) & 1) << i
        if not peek:
            pos += n
        return v

    log = take(4) + 5
    remaining, threshold, nb, previous0 = (1 << log) + 1, 1 << log, log + 1, False
    while remaining > 1:
        if previous0:
            while take(2) == 3:
                pass
        most = (2 * threshold - 1) - remaining
        low = take(nb - 1, peek=True) & (threshold - 1)
        if low < most:
            pos += nb - 1
            count = low
        else:
            v = take(nb) & (2 * threshold - 1)
            count = v - most if v >= threshold else v
        count -= 1
        remaining -= abs(count)
        previous0 = count == 0
        if 1 < remaining < threshold:
            nb = remaining.bit_length()
            threshold = 1 << (nb - 1)
    return pos


def excused_offsets(data: bytes) -> set[int]:
    """Offsets in a zstd log file of the documented limit: the first two bytes of the bitstream of
    an FSE-coded Huffman weight table in the first block of each frame (these files are small:
    one block per frame)."""
    out: set[int] = set()
    pos = 0
    while pos < len(data):
        fhd = data[pos + 4]
        header_len = 5 + (1, 2, 4, 8)[fhd >> 6]
        block_type = (data[pos + header_len] >> 1) & 3
        block = pos + header_len + 3
        lit = data[block]
        if block_type == 2 and lit & 3 == 2:  # compressed literals with a Huffman tree description
            tree = block + (3, 3, 4, 5)[(lit >> 2) & 3]
            if data[tree] < 128:
                start = tree + 1 + (_fse_description_bits(data[tree + 1 :]) + 7) // 8
                out |= {start, start + 1}
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(data[pos:])
        pos = len(data) - len(obj.unused_data)
    return out


def _validate_in_process(p: Produced, keys: dict[str, rsa.RSAPublicKey]) -> tuple[bool, str]:
    out = Validator(p.dest, keys).run()
    return out.ok, "\n".join(out.lines)


def _keys(p: Produced) -> dict[str, rsa.RSAPublicKey]:
    return {p.signer.fingerprint: p.signer.public_key()}


def test_the_small_destination_is_valid(small: Produced) -> None:
    ok, lines = _validate_in_process(small, _keys(small))
    assert ok, lines
    assert len(small.logs()) == 1 and len(small.digests()) == 2


def test_every_byte_of_a_log_file_and_a_digest(small: Produced) -> None:
    """Flip the lowest bit of each byte of the log file, of the digest that lists it and of its
    metadata file, one at a time: each must make validation fail naming the object."""
    keys = _keys(small)
    log_key = small.logs()[0]
    digest_key = small.digests()[0]
    targets = [
        (small.bucket / log_key, log_key),
        (small.bucket / digest_key, digest_key),
        (small.bucket / (digest_key + METADATA_SUFFIX), digest_key),
    ]
    excused = excused_offsets((small.bucket / log_key).read_bytes())
    assert len(excused) <= 4
    unnoticed = []
    for path, name in targets:
        original = path.read_bytes()
        try:
            for i in range(len(original)):
                flipped = bytearray(original)
                flipped[i] ^= 1
                path.write_bytes(bytes(flipped))
                ok, lines = _validate_in_process(small, keys)
                if ok or name not in lines:
                    unnoticed.append((name, i))
        finally:
            path.write_bytes(original)
    assert [(n, i) for n, i in unnoticed if not (n == log_key and i in excused)] == []


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_flipped_bit_of_any_delivered_object_fails(
    small: Produced,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI exits 1 and names the object, whichever bit of whichever object was flipped."""
    from trailseal import cli

    root = tmp_path_factory.mktemp("flip")
    try:
        shutil.copytree(small.bucket, root / "bucket")
        p = Produced(root, root / "bucket", small.pubkey, small.signer)
        path, name = data.draw(st.sampled_from(_objects(p)), label="object")
        raw = bytearray(path.read_bytes())
        i = data.draw(st.integers(0, len(raw) - 1), label="offset")
        bit = data.draw(st.integers(0, 7), label="bit")
        if path.name.endswith(".json.zst") and i in excused_offsets(bytes(raw)):
            return  # the documented limit (see the module docstring)
        raw[i] ^= 1 << bit
        path.write_bytes(bytes(raw))
        code = cli.main(
            [
                "validate",
                "--destination",
                f"file://{p.bucket}",
                "--public-key",
                str(p.pubkey),
                "--no-progress",
            ]
        )
        captured = capsys.readouterr()
        out = captured.out + captured.err
        assert code == 1, out
        assert name in out, out
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# one daemon per data dir, one Core per spool


def test_second_core_on_one_spool_is_refused(tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    first = _core.Core(spool, ["main"], account_id=ACCOUNT, region=REGION)
    with pytest.raises(_core.CoreError, match="in use by another trailseal") as info:
        _core.Core(spool, ["main"], account_id=ACCOUNT, region=REGION)
    assert "spool.lock" in str(info.value)
    del first
    _core.Core(spool, ["main"], account_id=ACCOUNT, region=REGION)


def test_second_daemon_on_one_data_dir_exits_2(daemon) -> None:  # type: ignore[no-untyped-def]
    first = daemon()
    second = daemon(data_dir=first.data_dir, wait=False)
    try:
        code = second.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second daemon kept running:\n{second.stderr()}")
    assert code == 2, second.stderr()
    lines = [line for line in second.stderr().splitlines() if line.strip()]
    expected = (
        f"trailseal: data dir {first.data_dir} is in use by another trailseal (pid {first.pid})"
    )
    assert any(line.startswith(expected) for line in lines), second.stderr()
    assert (first.data_dir / "trailseal.lock").read_text().strip() == str(first.pid)
    # the first one is unharmed and still takes events
    sock = first.connect_unix()
    try:
        sock.sendall(
            json.dumps({"eventName": "GetObject", "eventSource": "s3.amazonaws.com"}).encode()
            + b"\n"
        )
        reply = sock.makefile("rb").readline()
    finally:
        sock.close()
    assert json.loads(reply) == {"ack": 1}
    assert first.stop() == 0
    # with the first one gone the lock is free again
    third = daemon(data_dir=first.data_dir)
    assert third.stop() == 0, third.stderr()
