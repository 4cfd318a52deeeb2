"""Delivery: destinations, object keys, the signing key, the uploader and digest files.

``destination`` stores objects (``file://`` now, ``s3://`` later) under the keys ``layout``
computes; ``uploader`` delivers sealed log files; ``digest`` writes signed, chained digest
files with the key held by ``signer``. See docs/internals.md for the state they keep.
"""
