"""The daemon's HTTP API listener (``[api] listen``): ``/metrics`` and ``/healthz`` now; the
CloudTrail JSON API and ``POST /v1/events`` are added to :class:`server.ApiServer` later.
``trailseal status`` (:mod:`.status`) reads ``/healthz``."""
