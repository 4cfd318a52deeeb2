"""The daemon's HTTP API listener (``[api] listen``, :mod:`.server`): the CloudTrail API
(:mod:`.cloudtrail` over :mod:`.sigv4` and :mod:`.access_keys`; operations register in
:mod:`.operations`), ``POST /v1/events`` (:mod:`trailseal.ingest.http`), ``/metrics`` and
``/healthz``. :mod:`.connect` is the client side; ``trailseal status`` (:mod:`.status`) reads
``/healthz``."""
