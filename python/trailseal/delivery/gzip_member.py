"""trailseal's one canonical gzip encoding of digest files.

Hashes and signatures cover the *uncompressed* bytes, so the gzip wrapper must leave no bit free
to change unnoticed. A compressed deflate stream cannot promise that: some bits of its Huffman
headers can flip and still decode to the same bytes. Digests are small, so trailseal writes them
as one gzip member of *stored* deflate blocks, which has exactly one encoding per content::

    1f 8b 08 00  00 00 00 00  00  ff     ID1 ID2 CM=deflate FLG=0, MTIME=0, XFL=0, OS=255
    for each 65,535-byte piece of the content (one empty block for empty content):
        01 or 00                        BFINAL on the last block, BTYPE=00 (stored), zero padding
        LEN (2 bytes LE)  NLEN (2 bytes LE, ~LEN)  <LEN bytes of content>
    <CRC-32 of the content, LE> <content length mod 2^32, LE>

Every reader (the AWS CLI, gzip, zlib) reads it as ordinary gzip. :func:`decompress` accepts
exactly the bytes :func:`compress` writes for the content it finds and nothing else, raising
:class:`NotCanonicalGzipError`.
"""

from __future__ import annotations

import struct
import zlib

from trailseal.errors import IntegrityError

HEADER = bytes.fromhex("1f8b08000000000000ff")
BLOCK = 0xFFFF
"""The largest stored deflate block."""


class NotCanonicalGzipError(IntegrityError):
    """The bytes are not one gzip member exactly as trailseal writes it."""


def compress(data: bytes) -> bytes:
    """One canonical gzip member holding ``data``."""
    out = bytearray(HEADER)
    starts = range(0, len(data), BLOCK) if data else [0]
    last = starts[-1]
    for start in starts:
        piece = data[start : start + BLOCK]
        out.append(1 if start == last else 0)
        out += struct.pack("<HH", len(piece), len(piece) ^ 0xFFFF)
        out += piece
    out += struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return bytes(out)


def decompress(data: bytes) -> bytes:
    """The content of a canonical gzip member; anything else raises NotCanonicalGzipError."""
    if data[: len(HEADER)] != HEADER:
        raise NotCanonicalGzipError(
            f"gzip header (bytes 0-9) is {data[:10].hex(' ')}, not {HEADER.hex(' ')} "
            "(no flags, MTIME 0, XFL 0, OS 255)"
        )
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        content = inflate.decompress(data[len(HEADER) :])
    except zlib.error as e:
        raise NotCanonicalGzipError(f"the deflate data is corrupt: {e}") from None
    if not inflate.eof:
        raise NotCanonicalGzipError("the deflate data ends before its final block")
    expected = compress(content)
    if data != expected:
        offset = next(
            (i for i, (a, b) in enumerate(zip(data, expected, strict=False)) if a != b),
            min(len(data), len(expected)),
        )
        raise NotCanonicalGzipError(
            f"not trailseal's gzip encoding of its content from byte offset {offset} "
            "(stored deflate blocks of 65,535 bytes, CRC-32 and size, nothing after)"
        )
    return content
