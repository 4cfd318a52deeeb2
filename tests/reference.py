"""A small pure-Python reference verifier (FORMATS.md §3–§5), independent of the Rust core.

Used by the tests to cross-check ``trailseal._core.verify_log`` and ``trailseal validate``:
log file layout and event chain (zstandard + hashlib), digest signature and chaining
(cryptography). It also rebuilds log files so tests can tamper with them realistically.

The canonical-form check here only covers what the tests send (ASCII keys, strings, integers,
booleans, null, nested objects/arrays): for those, RFC 8785 equals ``json.dumps`` with sorted keys,
no spaces and no ASCII escaping.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ZERO_CHAIN = "00" * 32
HEAD = b'{"Records":[\n'
TAIL = b"]}\n"


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        return reader.read()
    if compression == "gzip":
        return gzip.decompress(data)
    raise ValueError(compression)


def compress(data: bytes, compression: str) -> bytes:
    """In trailseal's canonical encodings (what verify_log accepts): a single-segment zstd frame
    with checksum; one gzip member with header 1f8b0800 00000000 00ff."""
    if compression == "zstd":
        return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(data)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return bytes.fromhex("1f8b08000000000000ff") + body + trailer


def canonical(event: Any) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_step(previous: bytes, canonical_event: bytes) -> bytes:
    return hashlib.sha256(previous + hashlib.sha256(canonical_event).digest()).digest()


@dataclass
class LogReport:
    sha256: str
    event_count: int
    chain_end: str
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def verify_log(data: bytes, compression: str, chain_start: str) -> LogReport:
    """Layout, canonical form and chain of one log file's compressed bytes."""
    raw = decompress(data, compression)
    report = LogReport(hashlib.sha256(raw).hexdigest(), 0, chain_start)
    if not raw.startswith(HEAD) or not raw.endswith(TAIL):
        report.problems.append('layout: not {"Records":[ … ]} one event a line')
        return report
    body = raw[len(HEAD) : -len(TAIL)]
    lines = body.split(b"\n")[:-1] if body else []
    if body and not body.endswith(b"\n"):
        report.problems.append("layout: last event line does not end with a newline")
    chain = bytes.fromhex(chain_start)
    for i, line in enumerate(lines, 1):
        text = line[:-1] if i < len(lines) else line
        if i < len(lines) and not line.endswith(b","):
            report.problems.append(f"event {i}: no comma after it")
        try:
            event = json.loads(text)
        except ValueError as e:
            report.problems.append(f"event {i}: not JSON ({e})")
            continue
        if canonical(event) != text:
            report.problems.append(f"event {i}: not canonical")
        report.events.append(event)
        chain = chain_step(chain, text)
    report.event_count = len(lines)
    report.chain_end = chain.hex()
    return report


def build_log(events: list[dict[str, Any]], chain_start: str = ZERO_CHAIN) -> tuple[bytes, str]:
    """Uncompressed log file content for ``events`` and its chain end."""
    chain = bytes.fromhex(chain_start)
    lines = []
    for ev in events:
        c = canonical(ev)
        chain = chain_step(chain, c)
        lines.append(c)
    body = b",\n".join(lines) + b"\n" if lines else b""
    return HEAD + body + TAIL, chain.hex()


def verify_digest(
    gz: bytes,
    metadata: dict[str, str],
    *,
    bucket: str,
    key: str,
    public_key: rsa.RSAPublicKey,
    previous: tuple[bytes, dict[str, str], str] | None,
) -> list[str]:
    """Problems of one digest: location, signature, and chaining to ``previous`` (its gzip
    bytes, metadata and key), or that it starts a chain when ``previous`` is None."""
    problems = []
    raw = gzip.decompress(gz)
    doc = json.loads(raw)
    if doc["digestS3Bucket"] != bucket or doc["digestS3Object"] != key:
        problems.append("moved")
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if doc["digestPublicKeyFingerprint"] != hashlib.md5(der).hexdigest():
        problems.append("fingerprint")
    message = "\n".join(
        [
            doc["digestEndTime"],
            f"{doc['digestS3Bucket']}/{doc['digestS3Object']}",
            hashlib.sha256(raw).hexdigest(),
            doc["previousDigestSignature"] or "null",
        ]
    ).encode()
    try:
        public_key.verify(
            bytes.fromhex(metadata["signature"]), message, padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError, KeyError):
        problems.append("signature")
    if previous is None:
        fields = [k for k in doc if k.startswith("previousDigest")]
        if len(fields) != 5 or any(doc[k] is not None for k in fields):
            problems.append("not a starting digest")
    else:
        pgz, pmeta, pkey = previous
        praw = gzip.decompress(pgz)
        pdoc = json.loads(praw)
        if doc["previousDigestS3Object"] != pkey or doc["previousDigestS3Bucket"] != bucket:
            problems.append("previous location")
        if doc["previousDigestHashValue"] != hashlib.sha256(praw).hexdigest():
            problems.append("previous hash")
        if doc["previousDigestSignature"] != pmeta.get("signature"):
            problems.append("previous signature")
        if doc["previousDigestHashAlgorithm"] != "SHA-256":
            problems.append("previous hash algorithm")
        if doc["digestStartTime"] != pdoc["digestEndTime"]:
            problems.append("window not contiguous")
    if doc["digestEndTime"] <= doc["digestStartTime"]:
        problems.append("empty window")
    return problems
