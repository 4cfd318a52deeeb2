"""file:// destinations: keys laid out as S3 would hold them, no overwrite, atomic puts."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from trailseal.delivery.destination import FileDestination, NoSuchKeyError, open_destination
from trailseal.errors import ConfigError, DeliveryError, IntegrityError

KEY = "AWSLogs/000000000000/CloudTrail/r/2024/01/01/obj.json.zst"


@pytest.fixture
def dest(tmp_path: Path) -> FileDestination:
    d = open_destination(f"file://{tmp_path}/my-bucket", host_id="h1")
    assert isinstance(d, FileDestination)
    return d


def test_bucket_prefix_url(dest: FileDestination, tmp_path: Path) -> None:
    assert dest.bucket == "my-bucket"
    assert dest.prefix == ""
    assert dest.url == f"file://{tmp_path}/my-bucket"
    sub = open_destination(f"file://{tmp_path}/{{host_id}}/b", host_id="web-1")
    assert isinstance(sub, FileDestination)
    assert sub.root == tmp_path / "web-1" / "b"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file://host/dir", "no host"),
        ("file:relative/dir", "absolute"),
        ("ftp://x/y", "unknown scheme 'ftp'"),
        ("s3://b/prefix", "not an S3 bucket name"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_destination(url, host_id="h")


def test_put_get_list_metadata(dest: FileDestination) -> None:
    dest.put_bytes(KEY, b"hello", {"signature": "ab", "signature-algorithm": "SHA256withRSA"})
    assert (dest.root / KEY).read_bytes() == b"hello"
    side = dest.root / (KEY + ".metadata.json")
    assert json.loads(side.read_text()) == {
        "signature": "ab",
        "signature-algorithm": "SHA256withRSA",
    }
    assert dest.get_bytes(KEY) == b"hello"
    assert dest.get_metadata(KEY) == {"signature": "ab", "signature-algorithm": "SHA256withRSA"}
    assert dest.exists(KEY)
    dest.put_bytes("AWSLogs/a", b"1")
    dest.put_bytes("zz/b", b"2")
    assert dest.get_metadata("zz/b") == {}
    assert dest.list_keys() == [
        "AWSLogs/000000000000/CloudTrail/r/2024/01/01/obj.json.zst",
        "AWSLogs/a",
        "zz/b",
    ]
    assert dest.list_keys("AWSLogs/0") == [KEY]
    assert dest.list_keys("AWSLogs/000000000000/CloudTrail/") == [KEY]
    assert dest.list_keys("nothing/here") == []
    dest.delete(KEY)
    assert not dest.exists(KEY) and not side.exists()
    with pytest.raises(NoSuchKeyError, match=r"obj\.json\.zst"):
        dest.get_bytes(KEY)
    with pytest.raises(NoSuchKeyError):
        dest.delete(KEY)


def test_never_overwrites(dest: FileDestination, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"sealed bytes")
    dest.put_file(KEY, src)
    dest.put_file(KEY, src)  # same bytes again: accepted (a retry)
    dest.put_bytes(KEY, b"sealed bytes")
    with pytest.raises(IntegrityError, match=r"already exists .* different content"):
        dest.put_bytes(KEY, b"other bytes")
    assert dest.get_bytes(KEY) == b"sealed bytes"
    dest.put_bytes("d", b"x", {"signature": "1"})
    with pytest.raises(IntegrityError, match="different metadata"):
        dest.put_bytes("d", b"x", {"signature": "2"})
    assert dest.get_metadata("d") == {"signature": "1"}


def test_put_file_links_the_sealed_file_into_place(dest: FileDestination, tmp_path: Path) -> None:
    src = tmp_path / "sealed.log"
    src.write_bytes(b"sealed bytes")
    src.chmod(0o600)
    dest.put_file(KEY, src, {"sha256": "x"})
    target = dest.root / KEY
    assert target.stat().st_ino == src.stat().st_ino  # nothing copied
    assert target.stat().st_mode & 0o777 == 0o644  # as a copied object's
    assert sorted(os.listdir(target.parent)) == ["obj.json.zst", "obj.json.zst.metadata.json"]
    assert dest.get_metadata(KEY) == {"sha256": "x"}
    dest.put_file(KEY, src, {"sha256": "x"})  # a re-delivery after a crash: accepted
    twin = tmp_path / "twin.log"
    twin.write_bytes(b"sealed bytes")
    dest.put_file(KEY, twin, {"sha256": "x"})  # the same bytes in another file: accepted
    other = tmp_path / "other.log"
    other.write_bytes(b"other bytes!")
    with pytest.raises(IntegrityError, match=r"already exists .* different content"):
        dest.put_file(KEY, other, {"sha256": "x"})
    src.unlink()  # the spool lets the file go once the history has it
    assert dest.get_bytes(KEY) == b"sealed bytes"
    with pytest.raises(DeliveryError, match="cannot deliver"):
        dest.put_file("AWSLogs/gone.json.zst", tmp_path / "missing.log")


def test_put_file_copies_where_links_do_not_work(
    dest: FileDestination, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "sealed.log"
    src.write_bytes(b"sealed bytes")

    link = os.link

    def cross_device(source: Path, *args: object, **kwargs: object) -> None:
        if Path(source) == src:  # the spool on another filesystem than the bucket
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        link(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", cross_device)
    dest.put_file(KEY, src)
    monkeypatch.undo()
    target = dest.root / KEY
    assert target.read_bytes() == b"sealed bytes"
    assert target.stat().st_ino != src.stat().st_ino
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_no_temporaries_left_and_not_listed(dest: FileDestination) -> None:
    dest.put_bytes(KEY, b"a" * 100_000)
    with pytest.raises(IntegrityError):
        dest.put_bytes(KEY, b"b" * 100_000)
    directory = (dest.root / KEY).parent
    assert sorted(os.listdir(directory)) == ["obj.json.zst"]
    # a temporary a crashed writer left behind is never listed as an object
    (directory / ".obj2.json.zst.tmp-abc").write_bytes(b"torn")
    assert dest.list_keys() == [KEY]


def test_crash_left_metadata_without_object_is_replaced(dest: FileDestination) -> None:
    side = dest.root / "k.metadata.json"
    side.parent.mkdir(parents=True)
    side.write_text('{"signature":"old"}')
    dest.put_bytes("k", b"x", {"signature": "new"})
    assert dest.get_metadata("k") == {"signature": "new"}


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "x.metadata.json", "./a"])
def test_bad_keys(dest: FileDestination, key: str) -> None:
    with pytest.raises(DeliveryError, match="key"):
        dest.put_bytes(key, b"x")


def test_unwritable_root_is_delivery_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    d = open_destination(f"file://{tmp_path}/blocker/bucket", host_id="h")
    with pytest.raises(DeliveryError, match="cannot write object 'k'"):
        d.put_bytes("k", b"x")
