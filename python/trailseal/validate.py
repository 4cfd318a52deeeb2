"""``trailseal validate``: prove a destination's log files and digest files intact.

Walks every digest chain in the destination newest to oldest. A chain is the digests of one
stream (key root, account, region, trail name, all read from the digest key) linked by
``previousDigestS3Object``. Checked, each problem reported as one line naming the object:

- each digest: one gzip member exactly as trailseal writes it (:mod:`.delivery.gzip_member`;
  else "modified or not written by trailseal"), its metadata exactly ``signature`` (lower-case
  hex) and ``signature-algorithm: SHA256withRSA``, where it says it is (else "moved"), its
  signature with a trusted key matching ``digestPublicKeyFingerprint`` (keys from
  ``--public-key``; from the destination's ``trailseal-public-keys/`` only with
  ``--keys-from-destination``, reported as weaker), its previous digest present with the
  sha256 and signature it records;
- each listed log file: present, uncompressed sha256 equal to ``hashValue``, and
  ``_core.verify_log`` finds the layout, canonical form and chain intact with the listed
  ``eventCount`` and ``chainEnd``;
- across the files of a stream, in chain order: each ``chainStart`` is the previous ``chainEnd``
  (else "chain break"); the first file of a chain that starts at the beginning starts at zero;
- every log file object in the destination is listed in exactly one digest, except one whose
  key time (``YYYYMMDDTHHmmZ``, the delivery minute) is not before the minute of the newest digest
  end of its stream (same key root, account and region): it is "not yet covered by a digest", a
  note counted apart in the summary, not a failure (so a live destination validates between
  digests). Its bytes are still checked to be a well-formed log file.

Then a summary in the style of ``aws cloudtrail validate-logs``. Exit status: 0 when everything
is valid and at least one digest was found (log files not yet covered by a digest do not count
against it), 1 otherwise, 2 for usage errors (no trusted key, bad time, unreadable destination).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from trailseal import _core
from trailseal.delivery import gzip_member, layout
from trailseal.delivery.destination import Destination, NoSuchKeyError, open_destination
from trailseal.delivery.signer import fingerprint_of, load_public_keys_pem, verify_signature
from trailseal.errors import TrailsealError

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})+")
ZERO_CHAIN = "00" * 32
_PREVIOUS_FIELDS = (
    "previousDigestS3Bucket",
    "previousDigestS3Object",
    "previousDigestHashValue",
    "previousDigestHashAlgorithm",
    "previousDigestSignature",
)


def _fmt(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def parse_rfc3339(text: str, option: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise TrailsealError(
            f"{option} {text!r} is not an RFC 3339 time; write e.g. 2024-05-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise TrailsealError(f"{option} {text!r} has no time zone; add Z for UTC")
    return when.astimezone(UTC)


@dataclass
class Digest:
    key: str
    parts: layout.DigestKeyParts
    raw: bytes = b""
    doc: dict[str, Any] = field(default_factory=dict)
    signature: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    readable: bool = False
    in_range: bool = True
    history_ends: bool = False
    """Its previous digest is gone and older than everything left of the stream: expired by
    retention (``retention_days``), so the chain ends here with a note instead of a failure."""

    @property
    def stream(self) -> tuple[str, str, str, str]:
        p = self.parts
        return (p.root, p.account, p.region, p.trail_name)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def located(self) -> bool:
        return self.readable and self.doc.get("digestS3Object") == self.key


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)
    valid_lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    valid_digests: int = 0
    invalid_digests: int = 0
    valid_logs: int = 0
    invalid_logs: int = 0
    pending_logs: int = 0
    found_start: str | None = None
    found_end: str | None = None

    @property
    def ok(self) -> bool:
        return not self.lines and (self.valid_digests + self.invalid_digests) > 0


class Validator:
    """Validates one destination; :meth:`run` returns the :class:`Outcome` (blocking)."""

    def __init__(
        self,
        destination: Destination,
        keys: dict[str, rsa.RSAPublicKey],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        progress: Any = None,
    ) -> None:
        self.dest = destination
        self.keys = keys
        self.start = start
        self.end = end
        self.progress = progress
        self.out = Outcome()
        self.digests: dict[str, Digest] = {}

    # -- steps ---------------------------------------------------------------------------------

    def _load_digest(self, d: Digest) -> None:
        try:
            data = self.dest.get_bytes(d.key)
            d.metadata = self.dest.get_metadata(d.key)
            d.signature = d.metadata.get("signature")
            try:
                d.raw = gzip_member.decompress(data)
            except gzip_member.NotCanonicalGzipError as e:
                d.problems.append(f"modified or not written by trailseal: {e}")
                d.raw = gzip.decompress(data)  # the other checks still run on its content
            doc = json.loads(d.raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            d.doc = doc
            d.readable = True
        except (OSError, EOFError, ValueError, zlib.error, TrailsealError) as e:
            d.problems.append(f"cannot be read as a gzip JSON digest ({e})")
        if d.readable:
            try:
                end = datetime.strptime(str(d.doc.get("digestEndTime")), TIME_FORMAT)
            except ValueError:
                d.problems.append(f"digestEndTime {d.doc.get('digestEndTime')!r} is not a time")
                end = d.parts.end.replace(tzinfo=None)
            end = end.replace(tzinfo=UTC)
        else:
            end = d.parts.end
        d.in_range = (self.start is None or end >= self.start) and (
            self.end is None or end <= self.end
        )

    def _check_digest(self, d: Digest) -> None:
        """Location and signature of one digest."""
        if not d.readable:
            return
        doc = d.doc
        if doc.get("digestS3Object") != d.key or doc.get("digestS3Bucket") != self.dest.bucket:
            d.problems.append(
                f"moved: it says it is {doc.get('digestS3Bucket')}/{doc.get('digestS3Object')}"
                f" but it was found at {self.dest.bucket}/{d.key}"
            )
        extra = sorted(set(d.metadata) - {"signature", "signature-algorithm"})
        if extra:
            d.problems.append(f"metadata has unexpected keys {', '.join(extra)}")
        if d.metadata.get("signature-algorithm") != "SHA256withRSA":
            d.problems.append(
                f"metadata signature-algorithm {d.metadata.get('signature-algorithm')!r} is not "
                "SHA256withRSA"
            )
        if d.signature is not None and not _LOWER_HEX.fullmatch(d.signature):
            d.problems.append("bad signature: metadata signature is not lower-case hex")
        fp = doc.get("digestPublicKeyFingerprint")
        key = self.keys.get(str(fp))
        if key is None:
            d.problems.append(
                f"bad signature: signed with key {fp}, which is not a trusted key (give its "
                "public key with --public-key)"
            )
        elif d.signature is None:
            d.problems.append("bad signature: no signature in its metadata")
        else:
            message = "\n".join(
                [
                    str(doc.get("digestEndTime")),
                    f"{doc.get('digestS3Bucket')}/{doc.get('digestS3Object')}",
                    d.sha256,
                    str(doc.get("previousDigestSignature") or "null"),
                ]
            ).encode()
            if not verify_signature(key, message, d.signature):
                d.problems.append(f"bad signature: it does not verify with key {fp}")
        if doc.get("digestSignatureAlgorithm") != "SHA256withRSA":
            d.problems.append(
                f"digestSignatureAlgorithm {doc.get('digestSignatureAlgorithm')!r} is not "
                "SHA256withRSA"
            )
        if not isinstance(doc.get("logFiles"), list):
            d.problems.append("logFiles is missing or not a list")

    def _check_link(self, d: Digest, prev: Digest) -> None:
        doc, pdoc = d.doc, prev.doc
        if doc.get("previousDigestS3Bucket") != self.dest.bucket:
            d.problems.append(
                f"previousDigestS3Bucket {doc.get('previousDigestS3Bucket')!r} is not "
                f"{self.dest.bucket!r}"
            )
        if prev.readable and doc.get("previousDigestHashValue") != prev.sha256:
            d.problems.append(
                f"previous digest {prev.key} was modified: its sha256 is {prev.sha256}, "
                f"this digest recorded {doc.get('previousDigestHashValue')}"
            )
        if doc.get("previousDigestSignature") != prev.signature:
            d.problems.append(
                f"previous digest {prev.key} has a different signature than this digest recorded"
            )
        if prev.readable and doc.get("digestStartTime") != pdoc.get("digestEndTime"):
            d.problems.append(
                f"window gap: digestStartTime {doc.get('digestStartTime')} is not the previous "
                f"digest's digestEndTime {pdoc.get('digestEndTime')}"
            )

    def _chains(self, stream: list[Digest]) -> list[list[Digest]]:
        """The stream's chains, newest first, each listed newest to oldest."""
        referenced = {d.doc.get("previousDigestS3Object") for d in stream if d.readable}
        heads = sorted(
            (d for d in stream if d.key not in referenced),
            key=lambda d: d.parts.end,
            reverse=True,
        )
        seen: set[str] = set()
        chains: list[list[Digest]] = []

        def walk(head: Digest) -> list[Digest]:
            chain: list[Digest] = []
            cur: Digest | None = head
            while cur is not None and cur.key not in seen:
                seen.add(cur.key)
                chain.append(cur)
                if not cur.readable:
                    break
                prev_key = cur.doc.get("previousDigestS3Object")
                if prev_key is None:
                    nulls = [f for f in _PREVIOUS_FIELDS if cur.doc.get(f) is not None]
                    if nulls:
                        cur.problems.append(
                            f"previousDigestS3Object is null but {', '.join(nulls)} are not"
                        )
                    break
                prev = self.digests.get(str(prev_key))
                if prev is None and self._expired(str(prev_key), stream):
                    cur.history_ends = True
                    self.out.notes.append(
                        f"Digest file {cur.key}: history starts here: its previous digest "
                        f"{prev_key} is gone and older than everything left of its stream "
                        "(expired by retention)"
                    )
                    break
                if prev is None:
                    cur.problems.append(f"previous digest {prev_key} is missing (deleted or moved)")
                    break
                self._check_link(cur, prev)
                cur = prev
            return chain

        for head in heads:
            chains.append(walk(head))
        for d in sorted(stream, key=lambda d: d.parts.end, reverse=True):
            if d.key not in seen:  # only in a cycle
                d.problems.append("its digest chain loops back on itself")
                chains.append(walk(d))
        return chains

    @staticmethod
    def _expired(prev_key: str, stream: list[Digest]) -> bool:
        """A missing previous digest counts as expired history (not as deleted) when its key
        says it ended before every digest still present in the stream. (Log files it listed that
        are still there are then listed in no digest: reported as such.)"""
        parts = layout.parse_digest_key(prev_key)
        return parts is not None and all(parts.end < d.parts.end for d in stream)

    def _check_log(self, entry: dict[str, Any], digest: Digest) -> list[str]:
        key = str(entry.get("s3Object"))
        problems: list[str] = []
        if entry.get("s3Bucket") != self.dest.bucket:
            problems.append(
                f"moved: digest {digest.key} lists it in bucket {entry.get('s3Bucket')!r}, "
                f"not {self.dest.bucket!r}"
            )
        try:
            data = self.dest.get_bytes(key)
        except NoSuchKeyError:
            _, stamp = _log_key_stream(key)
            if digest.history_ends and stamp is not None and stamp.date() < digest.parts.end.date():
                # retention removed it on the day before the first digest left (the digest
                # that listed it is kept a little longer): the end of history, not a deletion
                self.out.notes.append(
                    f"Log file {key}: expired (listed in {digest.key}, where history starts)"
                )
                return []
            return [f"missing (listed in digest {digest.key})"]
        except TrailsealError as e:
            return [f"cannot be read: {e}"]
        compression = "gzip" if key.endswith(".gz") else "zstd"
        chain_start = str(entry.get("chainStart"))
        try:
            report = _core.verify_log(data, compression, chain_start)
        except Exception as e:  # the core raises ValueError/CoreError for unreadable bytes
            return [*problems, f"modified: cannot be read as a {compression} log file ({e})"]
        if report.sha256 != entry.get("hashValue"):
            problems.append(
                f"modified: sha256 of its content is {report.sha256}, digest {digest.key} "
                f"recorded {entry.get('hashValue')}"
            )
        for p in report.problems:
            problems.append(f"not a valid log file: {p}")
        if report.event_count != entry.get("eventCount"):
            problems.append(
                f"holds {report.event_count} events, digest {digest.key} recorded "
                f"{entry.get('eventCount')}"
            )
        if report.chain_end != entry.get("chainEnd"):
            problems.append(
                f"event chain ends at {report.chain_end}, digest {digest.key} recorded "
                f"{entry.get('chainEnd')} (events changed, reordered, inserted or removed)"
            )
        return problems

    # -- the walk ------------------------------------------------------------------------------

    def run(self) -> Outcome:
        out = self.out
        all_keys = self.dest.list_keys(self.dest.prefix)
        log_keys = [k for k in all_keys if layout.is_log_file_key(k)]
        for k in all_keys:
            parts = layout.parse_digest_key(k)
            if parts is not None:
                self.digests[k] = Digest(k, parts)
        task = None
        if self.progress is not None:
            task = self.progress.add_task("validating", total=len(self.digests) + len(log_keys))
        for d in self.digests.values():
            self._load_digest(d)
            self._check_digest(d)
        streams: dict[tuple[str, str, str, str], list[Digest]] = {}
        for d in self.digests.values():
            streams.setdefault(d.stream, []).append(d)

        listed: dict[str, str] = {}
        log_results: dict[str, list[str]] = {}
        for stream_key in sorted(streams):
            chains = self._chains(streams[stream_key])
            # chain order, oldest first: fragments by end time, each oldest to newest
            ordered = [d for chain in reversed(chains) for d in reversed(chain)]
            # Insight files chain apart from the stream's other files (FORMATS.md §4)
            previous_by_kind: dict[bool, tuple[str, str]] = {}
            for d in ordered:
                entries = d.doc.get("logFiles") if d.located else None
                if not isinstance(entries, list):
                    continue
                for entry in entries:
                    if not isinstance(entry, dict):
                        d.problems.append("a logFiles entry is not an object")
                        continue
                    key = str(entry.get("s3Object"))
                    if key in listed:
                        log_results.setdefault(key, []).append(
                            f"listed in two digests ({listed[key]} and {d.key})"
                        )
                        continue
                    listed[key] = d.key
                    insight = _is_insight_key(key)
                    previous_entry = previous_by_kind.get(insight)
                    if d.in_range:
                        problems = self._check_log(entry, d)
                        start = entry.get("chainStart")
                        if previous_entry is not None and start != previous_entry[1]:
                            problems.append(
                                f"chain break: events missing between {previous_entry[0]} and "
                                f"this file (its chainStart is not that file's chainEnd)"
                            )
                        elif previous_entry is None and self.start is None:
                            # (a stream's first Insight file after a restarted chain starts at
                            # zero like any other first file)
                            first_is_start = ordered[0].doc.get("previousDigestS3Object") is None
                            if first_is_start and start != ZERO_CHAIN:
                                problems.append(
                                    "chain break: events missing before this file (the first "
                                    "file of its stream does not start the chain at zero)"
                                )
                        log_results.setdefault(key, []).extend(problems)
                        if task is not None:
                            self.progress.advance(task)
                    previous_by_kind[insight] = (key, str(entry.get("chainEnd")))

        newest = self._newest_digest_ends()
        for k in log_keys:
            if k in listed or not self._log_key_in_range(k):
                continue
            stream, stamp = _log_key_stream(k)
            end = newest.get(stream) if stream is not None else None
            # A key's stamp is its seal time; a file sealed just before a digest was built and
            # delivered just after goes into the next digest: one minute of slack before the
            # newest digest's end (the stamp has minute resolution) keeps such a file a note.
            slack = timedelta(minutes=1)
            if stamp is not None and (end is None or stamp >= end.replace(second=0) - slack):
                bad = self._unlisted_log_problems(k)
                if bad:
                    log_results[k] = [f"not yet covered by a digest and {p}" for p in bad]
                else:
                    out.pending_logs += 1
                    after = (
                        f"the newest digest of its stream ends {_fmt(end)}"
                        if end
                        else ("its stream has no digest yet")
                    )
                    out.notes.append(f"Log file {k}: not yet covered by a digest ({after})")
            else:
                log_results.setdefault(k, []).append(
                    "not listed in any digest"
                    + (
                        f" (delivered before the newest digest of its stream, {_fmt(end)})"
                        if end is not None
                        else ""
                    )
                )
            if task is not None:
                self.progress.advance(task)

        for d in sorted(self.digests.values(), key=lambda d: (d.stream, d.parts.end)):
            if not d.in_range:
                continue
            if d.problems:
                out.invalid_digests += 1
                out.lines.extend(f"Digest file {d.key}: {p}" for p in d.problems)
            else:
                out.valid_digests += 1
                out.valid_lines.append(f"Digest file\t{d.key}\tvalid")
            if d.readable:
                ds, de = str(d.doc.get("digestStartTime")), str(d.doc.get("digestEndTime"))
                out.found_start = min(out.found_start or ds, ds)
                out.found_end = max(out.found_end or de, de)
        for k in sorted(log_results):
            if log_results[k]:
                out.invalid_logs += 1
                out.lines.extend(f"Log file {k}: {p}" for p in log_results[k])
            else:
                out.valid_logs += 1
                out.valid_lines.append(f"Log file\t{k}\tvalid")
        return out

    def _newest_digest_ends(self) -> dict[tuple[str, str, str], datetime]:
        """Per (key root, account, region): the newest digest end found (from the digest keys, all
        trails of that root together)."""
        newest: dict[tuple[str, str, str], datetime] = {}
        for d in self.digests.values():
            p = d.parts
            stream = (p.root, p.account, p.region)
            newest[stream] = max(newest.get(stream, p.end), p.end)
        return newest

    def _unlisted_log_problems(self, key: str) -> list[str]:
        """Why a log file no digest lists yet is not even a well-formed log file (or [])."""
        try:
            data = self.dest.get_bytes(key)
        except TrailsealError as e:
            return [f"cannot be read: {e}"]
        compression = "gzip" if key.endswith(".gz") else "zstd"
        try:
            report = _core.verify_log(data, compression, ZERO_CHAIN)
        except Exception as e:  # the core raises ValueError/CoreError for unreadable bytes
            return [f"cannot be read as a {compression} log file ({e})"]
        return [f"not a valid log file: {p}" for p in report.problems]

    def _log_key_in_range(self, key: str) -> bool:
        stamp = key.rsplit("_", 2)[-2]  # YYYYMMDDTHHmmZ
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%MZ").replace(tzinfo=UTC)
        except ValueError:
            return True
        if self.start is not None and when < self.start.replace(second=0, microsecond=0):
            return False
        return self.end is None or when <= self.end


_LOG_STREAM_RE = re.compile(
    r"^(?P<root>(?:.*/)?AWSLogs/(?:o-[a-z0-9]+/)?)(?P<account>\d{12})/CloudTrail(?:-Insight)?/"
    r"(?P<region>[^/]+)/.*_(?P<stamp>\d{8}T\d{4}Z)_[A-Za-z0-9]{16}\.json\.(?:zst|gz)$"
)


def _log_key_stream(key: str) -> tuple[tuple[str, str, str] | None, datetime | None]:
    """(key root, account, region) and the delivery minute of a log file key."""
    m = _LOG_STREAM_RE.match(key)
    if m is None:
        return None, None
    try:
        stamp = datetime.strptime(m["stamp"], "%Y%m%dT%H%MZ").replace(tzinfo=UTC)
    except ValueError:
        return None, None
    return (m["root"], m["account"], m["region"]), stamp


def _load_keys(args: argparse.Namespace, dest: Destination) -> dict[str, rsa.RSAPublicKey]:
    keys: dict[str, rsa.RSAPublicKey] = {}
    for path in args.public_key:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise TrailsealError(f"--public-key {path}: cannot be read ({e})") from e
        for key in load_public_keys_pem(data, f"--public-key {path}"):
            keys[fingerprint_of(key)] = key
    if args.keys_from_destination:
        prefix = layout.join_key(dest.prefix, f"{layout.PUBLIC_KEYS_DIR}/")
        for obj in dest.list_keys(prefix):
            if obj.endswith(".pem"):
                for key in load_public_keys_pem(dest.get_bytes(obj), obj):
                    keys[fingerprint_of(key)] = key
    return keys


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        yield progress


def main(args: argparse.Namespace) -> int:
    """``trailseal validate`` (args as built in trailseal.cli)."""
    try:
        start = parse_rfc3339(args.start_time, "--start-time") if args.start_time else None
        end = parse_rfc3339(args.end_time, "--end-time") if args.end_time else None
        if "{host_id}" in args.destination:
            raise TrailsealError(
                f"--destination {args.destination}: replace {{host_id}} with the host's id "
                "(each host's chains live under its own prefix)"
            )
        dest = open_destination(
            args.destination,
            host_id="",
            s3_endpoint_url=getattr(args, "s3_endpoint_url", "") or "",
        )
        keys = _load_keys(args, dest)
    except TrailsealError as e:
        print(f"trailseal validate: {e}", file=sys.stderr)
        return 2
    if not keys:
        where = (
            f"no public keys found in {dest.url}/trailseal-public-keys/"
            if args.keys_from_destination
            else "no trusted public key given"
        )
        print(
            f"trailseal validate: {where}; give the daemon's public key with --public-key FILE "
            "(`trailseal keys export` prints it), or add --keys-from-destination (weaker)",
            file=sys.stderr,
        )
        return 2
    if args.keys_from_destination:
        print(
            "Note: trusting public keys read from the destination itself (--keys-from-destination)"
            " is a weaker check: whoever can write the destination can replace them.",
        )
    show = sys.stderr.isatty() and not args.no_progress
    try:
        with _progress(show) as progress:
            out = Validator(dest, keys, start=start, end=end, progress=progress).run()
    except TrailsealError as e:
        print(f"trailseal validate: {e}", file=sys.stderr)
        return 2

    for line in out.lines:
        print(line)
    for line in out.notes:
        print(f"Note: {line}")
    if args.verbose:
        for line in out.valid_lines:
            print(line)
    requested_start = _fmt(start) if start else (out.found_start or "the first digest")
    requested_end = _fmt(end) if end else _fmt(datetime.now(UTC))
    print()
    print(f"Results requested for {requested_start} to {requested_end}")
    if out.valid_digests + out.invalid_digests == 0:
        print("No digests found")
        return 1
    print(f"Results found for {out.found_start} to {out.found_end}:")
    print()
    _ratio(out.valid_digests, out.invalid_digests, "digest")
    _ratio(out.valid_logs, out.invalid_logs, "log")
    if out.pending_logs:
        print(f"{out.pending_logs} log files not yet covered by a digest (not counted above)")
    return 0 if out.ok else 1


def _ratio(valid: int, invalid: int, name: str) -> None:
    total = valid + invalid
    line = f"{valid}/{total} {name} files valid"
    if invalid:
        line += f", {invalid}/{total} {name} files INVALID"
    print(line)


def _is_insight_key(key: str) -> bool:
    """Whether a log file key is an Insight log file (``…_CloudTrail-Insight_…`` name)."""
    return "_CloudTrail-Insight_" in key.rsplit("/", 1)[-1]
