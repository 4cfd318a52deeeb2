"""Digest files (FORMATS.md §5): built, signed, delivered and chained per stream.

A stream is one (account, region) of a trail. Each ``digest_interval_secs`` (and once more at
shutdown, :meth:`DigestWriter.write_final`) every stream gets one digest listing the log files
delivered since its previous digest (possibly none). Invariants:

- windows are contiguous: a digest's ``digestStartTime`` is the previous one's ``digestEndTime``;
  each end is at least one second after the previous end (so no two digests share a key);
- ``previousDigest*`` chain to the last delivered digest of the stream; all five are null in a
  starting digest (first ever, or the state was lost: logged as a WARNING);
- a digest lists only files already delivered (the lines of ``delivered.jsonl``), and a file is
  listed in exactly one digest;
- the object is one gzip member in trailseal's canonical encoding (:mod:`.gzip_member`: fixed
  header, zero padding), so that no byte of it can change unnoticed;
- the signature (SHA256withRSA, lower-case hex, in the object's metadata ``signature``) is over
  ``digestEndTime \\n bucket/key \\n sha256hex(uncompressed digest) \\n previousSignature|null``;
- the public key is delivered to ``trailseal-public-keys/<fingerprint>.pem`` before the first
  digest signed with it.

State in ``<state_dir>`` (besides ``delivered.jsonl``, see :mod:`.uploader`)::

    digests.json          {"streams": {"<account>/<region>": {"start": <next digestStartTime>,
                           "last": {"key","bucket","end","sha256","signature"} | null,
                           "recent_files": [object keys listed by the last digests]}},
                           "public_keys": [fingerprints delivered]}
    pending-digest.json   a digest built and about to be delivered: {"stream","key","bucket",
                           "gzip" (base64 of the object), "sha256","signature","start","end",
                           "fingerprint","lines" (the delivered.jsonl lines it covers)}

Crash safety: the pending digest is persisted (atomically) before delivery; at start a pending
digest is delivered again (same bytes, so the no-overwrite put accepts it) and committed:
``digests.json`` replaced, covered lines removed from ``delivered.jsonl`` (atomic rewrite), the
pending file removed. Each step is idempotent, so a crash anywhere repeats it harmlessly.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from trailseal import metrics
from trailseal.config import Config, TrailConfig
from trailseal.delivery import gzip_member, layout
from trailseal.delivery.destination import Destination
from trailseal.delivery.signer import SIGNATURE_ALGORITHM, Signer
from trailseal.delivery.uploader import DeliveryState, retry_forever
from trailseal.durable import replace_atomically

log = logging.getLogger(__name__)

RECENT_FILES_KEPT = 1024
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> int:
    return int(datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp())


def signing_string(end: str, bucket: str, key: str, sha256_hex: str, previous: str | None) -> bytes:
    """The bytes a digest's signature covers (FORMATS.md §5)."""
    return f"{end}\n{bucket}/{key}\n{sha256_hex}\n{previous or 'null'}".encode()


def build_digest(
    *,
    account: str,
    start: str,
    end: str,
    bucket: str,
    key: str,
    fingerprint: str,
    previous: dict[str, Any] | None,
    files: list[dict[str, Any]],
) -> bytes:
    """The uncompressed digest JSON (compact, fields in FORMATS.md §5 order)."""
    entries = [
        {
            "s3Bucket": f["s3Bucket"],
            "s3Object": f["s3Object"],
            "hashValue": f["hashValue"],
            "hashAlgorithm": f["hashAlgorithm"],
            "newestEventTime": f["newestEventTime"],
            "oldestEventTime": f["oldestEventTime"],
            "eventCount": f["eventCount"],
            "chainStart": f["chainStart"],
            "chainEnd": f["chainEnd"],
        }
        for f in files
    ]
    doc = {
        "awsAccountId": account,
        "digestStartTime": start,
        "digestEndTime": end,
        "digestS3Bucket": bucket,
        "digestS3Object": key,
        "digestPublicKeyFingerprint": fingerprint,
        "digestSignatureAlgorithm": SIGNATURE_ALGORITHM,
        "newestEventTime": max((f["newestEventTime"] for f in files), default=None),
        "oldestEventTime": min((f["oldestEventTime"] for f in files), default=None),
        "previousDigestS3Bucket": previous["bucket"] if previous else None,
        "previousDigestS3Object": previous["key"] if previous else None,
        "previousDigestHashValue": previous["sha256"] if previous else None,
        "previousDigestHashAlgorithm": "SHA-256" if previous else None,
        "previousDigestSignature": previous["signature"] if previous else None,
        "logFiles": entries,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class DigestWriter:
    """Writes one trail's digest files; ``run`` is the periodic task, ``write_final`` the last."""

    def __init__(
        self,
        *,
        config: Config,
        trail: TrailConfig,
        destination: Destination,
        signer: Signer,
        state_dir: Path,
    ) -> None:
        self.config = config
        self.trail = trail
        self.destination = destination
        self.signer = signer
        self.state = DeliveryState(state_dir)
        self._lock = trio.Lock()
        self._created = math.floor(time.time())
        self._warned: set[str] = set()

    # -- state -----------------------------------------------------------------------------

    def _own_stream(self) -> str:
        return f"{self.config.daemon.account_id}/{self.config.daemon.region}"

    async def _recover(self) -> None:
        """Deliver and commit a digest a crash (or a cancelled round) left pending."""
        await trio.to_thread.run_sync(self.state.ensure_dir)
        pending = await trio.to_thread.run_sync(self._read_pending)
        if pending is not None:
            log.warning(
                "trail %s: delivering digest %s again (a previous run stopped before recording "
                "it as delivered)",
                self.trail.name,
                pending["key"],
            )
            await self._deliver_and_commit(pending)

    def _read_pending(self) -> dict[str, Any] | None:
        try:
            raw: dict[str, Any] = json.loads(self.state.pending_path.read_bytes())
        except FileNotFoundError:
            return None
        return raw

    def _commit(self, pending: dict[str, Any]) -> None:
        with self.state.lock:
            state = self.state.read_digests()
            streams = state.setdefault("streams", {})
            covered_keys = [json.loads(line)["s3Object"] for line in pending["lines"]]
            old = streams.get(pending["stream"], {})
            recent = [*old.get("recent_files", []), *covered_keys][-RECENT_FILES_KEPT:]
            streams[pending["stream"]] = {
                "start": pending["end"],
                "last": {
                    "key": pending["key"],
                    "bucket": pending["bucket"],
                    "end": pending["end"],
                    "sha256": pending["sha256"],
                    "signature": pending["signature"],
                },
                "recent_files": recent,
            }
            fps = state.setdefault("public_keys", [])
            if pending["fingerprint"] not in fps:
                fps.append(pending["fingerprint"])
            replace_atomically(self.state.digests_path, json.dumps(state, indent=1).encode())
            remaining = self.state.read_delivered_lines()
            for line in pending["lines"]:
                if line in remaining:
                    remaining.remove(line)
            replace_atomically(
                self.state.delivered_path, "".join(f"{line}\n" for line in remaining).encode()
            )
            self.state.pending_path.unlink(missing_ok=True)

    async def _deliver_and_commit(self, pending: dict[str, Any]) -> None:
        data = base64.b64decode(pending["gzip"])
        metadata = {"signature": pending["signature"], "signature-algorithm": SIGNATURE_ALGORITHM}
        key = pending["key"]
        await self._ensure_public_key(pending["fingerprint"])
        trail = self.trail.name
        await retry_forever(
            f"delivering digest {key} to {self.destination.url}",
            lambda: self.destination.put_bytes(key, data, metadata),
            lambda e: metrics.delivery_failed(trail, f"delivering digest {key}: {e}"),
        )
        metrics.digest_delivered(trail)
        await retry_forever(
            f"recording digest {key} in {self.state.digests_path}",
            lambda: self._commit(pending),
        )

    async def _ensure_public_key(self, fingerprint: str) -> None:
        state = await trio.to_thread.run_sync(self.state.read_digests)
        if fingerprint in state.get("public_keys", []):
            return
        if fingerprint != self.signer.fingerprint:
            return  # a pending digest signed by an older key: that key was delivered before it
        key = layout.public_key_object_key(self.destination.prefix, fingerprint)
        pem = self.signer.public_key_pem()
        await retry_forever(
            f"delivering public key {key} to {self.destination.url}",
            lambda: self.destination.put_bytes(key, pem),
        )

    # -- building ----------------------------------------------------------------------------

    def _build_pending(self, stream: str, now: int, lines: list[str]) -> dict[str, Any]:
        """Build, sign and persist the next digest of ``stream`` (blocking; under the lock)."""
        account, region = stream.split("/", 1)
        state = self.state.read_digests()
        streams = state.get("streams", {})
        info = streams.get(stream)
        own = streams.get(self._own_stream())
        if info is None:
            start_epoch = parse_time(own["start"]) if own else self._created
            previous = None
        else:
            start_epoch = parse_time(info["start"])
            previous = info.get("last")
        end_epoch = max(now, start_epoch + 1)
        if previous is not None:
            end_epoch = max(end_epoch, parse_time(previous["end"]) + 1)
        else:
            # never reuse the key of a digest the lost state no longer knows about
            end_epoch = max(end_epoch, self._restart_floor(stream, account, region) + 1)
        start, end = format_time(start_epoch), format_time(end_epoch)
        key = layout.digest_object_key(
            prefix=self.destination.prefix,
            organization_id=self.trail.organization_id,
            account=account,
            region=region,
            trail_name=self.trail.name,
            home_region=self.config.daemon.region,
            end=datetime.fromtimestamp(end_epoch, UTC),
        )
        bucket = self.destination.bucket
        files = [json.loads(line) for line in lines]
        raw = build_digest(
            account=account,
            start=start,
            end=end,
            bucket=bucket,
            key=key,
            fingerprint=self.signer.fingerprint,
            previous=previous,
            files=files,
        )
        sha = hashlib.sha256(raw).hexdigest()
        prev_sig = previous["signature"] if previous else None
        signature = self.signer.sign(signing_string(end, bucket, key, sha, prev_sig))
        pending = {
            "stream": stream,
            "key": key,
            "bucket": bucket,
            "gzip": base64.b64encode(gzip_member.compress(raw)).decode(),
            "sha256": sha,
            "signature": signature,
            "start": start,
            "end": end,
            "fingerprint": self.signer.fingerprint,
            "lines": lines,
        }
        replace_atomically(self.state.pending_path, json.dumps(pending).encode())
        return pending

    def _restart_floor(self, stream: str, account: str, region: str) -> int:
        """For a starting digest: the newest end among digests of this stream and trail already
        in the destination (0 when none). When there are some, the chain state was lost: say
        so once (the validator will see two chains)."""
        probe = layout.digest_object_key(
            prefix=self.destination.prefix,
            organization_id=self.trail.organization_id,
            account=account,
            region=region,
            trail_name=self.trail.name,
            home_region=self.config.daemon.region,
            end=datetime.fromtimestamp(0, UTC),
        )
        directory = probe.rsplit("/", 4)[0] + "/"
        ends = []
        for k in self.destination.list_keys(directory):
            parts = layout.parse_digest_key(k)
            if parts is not None and parts.trail_name == self.trail.name:
                ends.append(int(parts.end.timestamp()))
        if ends and stream not in self._warned:
            self._warned.add(stream)
            log.warning(
                "trail %s: no digest chain state for stream %s in %s but %d digests exist in %s; "
                "the digest chain restarts (the next digest starts a new chain)",
                self.trail.name,
                stream,
                self.state.digests_path,
                len(ends),
                self.destination.url,
            )
        return max(ends, default=0)

    def _plan(self) -> dict[str, list[str]]:
        """Streams to digest now, each with the delivered lines it will list (blocking)."""
        with self.state.lock:
            lines = self.state.read_delivered_lines()
            known = self.state.read_digests().get("streams", {})
        plan: dict[str, list[str]] = {self._own_stream(): []}
        for stream in known:
            plan.setdefault(stream, [])
        for line in lines:
            entry = json.loads(line)
            plan.setdefault(f"{entry['account']}/{entry['region']}", []).append(line)
        return plan

    async def _write_round(self) -> None:
        async with self._lock:
            await self._recover()
            plan = await trio.to_thread.run_sync(self._plan)
            now = math.floor(time.time())
            for stream in sorted(plan):
                pending = await retry_forever(
                    f"building the digest of trail {self.trail.name} stream {stream}",
                    functools.partial(self._build_with_lock, stream, now, plan[stream]),
                )
                await self._deliver_and_commit(pending)
                log.info("trail %s: delivered digest %s", self.trail.name, pending["key"])

    def _build_with_lock(self, stream: str, now: int, lines: list[str]) -> dict[str, Any]:
        with self.state.lock:
            return self._build_pending(stream, now, lines)

    async def _next_due(self) -> float:
        state = await trio.to_thread.run_sync(self.state.read_digests)
        own = state.get("streams", {}).get(self._own_stream())
        start = parse_time(own["start"]) if own else self._created
        return start + self.trail.digest_interval_secs

    # -- tasks -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every stream's digest each ``digest_interval_secs``; runs until cancelled."""
        async with self._lock:
            await self._recover()
        task_status.started()
        while True:
            due = await self._next_due()
            await trio.sleep(max(0.0, due - time.time()))
            await self._write_round()

    async def write_final(self) -> None:
        """The final digest of every stream (call after the uploader has finished)."""
        await self._write_round()
