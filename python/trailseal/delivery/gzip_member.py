"""trailseal's one canonical gzip encoding (digest files now, gzip log files later).

Hashes and signatures cover the *uncompressed* bytes, so the gzip wrapper must leave no byte
free to change unnoticed. trailseal writes exactly one member::

    1f 8b 08 00  00 00 00 00  00  ff     ID1 ID2 CM=deflate FLG=0, MTIME=0, XFL=0, OS=255
    <raw deflate stream, zlib level 6; the padding bits after its final block are zero>
    <CRC-32 of the content, little-endian> <content length mod 2^32, little-endian>

and :func:`decompress` accepts nothing else (another header, a nonzero padding bit, a bad
CRC/ISIZE, a second member or any trailing byte), raising :class:`NotCanonicalGzipError`.
The Rust ``verify_log`` applies the same rules to gzip log files.
"""

from __future__ import annotations

import struct
import zlib

from trailseal.errors import IntegrityError

HEADER = bytes.fromhex("1f8b08000000000000ff")
LEVEL = 6


class NotCanonicalGzipError(IntegrityError):
    """The bytes are not one gzip member exactly as trailseal writes it."""


def compress(data: bytes) -> bytes:
    """One canonical gzip member holding ``data``."""
    deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return HEADER + body + trailer


def _inflate(body: bytes) -> tuple[bytes, int] | None:
    """(content, bytes of ``body`` the deflate stream takes), or None when it does not decode."""
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        content = inflate.decompress(body)
    except zlib.error:
        return None
    if not inflate.eof:
        return None
    return content, len(body) - len(inflate.unused_data)


def decompress(data: bytes) -> bytes:
    """The content of a canonical gzip member; anything else raises NotCanonicalGzipError."""
    if data[: len(HEADER)] != HEADER:
        raise NotCanonicalGzipError(
            f"gzip header (bytes 0-9) is {data[:10].hex(' ')}, not {HEADER.hex(' ')} "
            "(no flags, MTIME 0, XFL 0, OS 255)"
        )
    body = data[len(HEADER) :]
    inflated = _inflate(body)
    if inflated is None:
        raise NotCanonicalGzipError("the deflate data is corrupt or ends before its final block")
    content, used = inflated
    end = len(HEADER) + used
    trailer = body[used:]
    if len(trailer) != 8:
        raise NotCanonicalGzipError(
            f"the deflate data ends at byte offset {end}, followed by {len(trailer)} bytes "
            "instead of exactly the 8-byte CRC-32 and size"
        )
    crc, size = struct.unpack("<II", trailer)
    if crc != zlib.crc32(content):
        raise NotCanonicalGzipError(f"CRC-32 at byte offset {end} does not match the content")
    if size != len(content) & 0xFFFFFFFF:
        raise NotCanonicalGzipError(f"size at byte offset {end + 4} does not match the content")
    # The high bits of the last deflate byte that inflate did not read decode the same whatever
    # their value: trailseal writes them as zero.
    probe = bytearray(body[:used])
    for bit in range(7, -1, -1):
        probe[-1] ^= 1 << bit
        same = _inflate(bytes(probe)) == (content, used)
        probe[-1] ^= 1 << bit
        if not same:
            break
        if body[used - 1] & (1 << bit):
            raise NotCanonicalGzipError(
                f"padding bits after the final deflate block (byte offset {end - 1}) are not zero"
            )
    return content
