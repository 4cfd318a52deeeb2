"""HTTP ingest (FORMATS.md §2): ``POST /v1/events`` on the API listener.

The body is NDJSON, numbered from line 1 like a connection's lines (blank lines are not
counted). It goes through the socket listeners' submission path (:meth:`Ingest.submit_body`:
the same framing, the same bounded channel, the same batcher, so backpressure and the ingest
metrics are shared), and the answer comes after the durable commit that settles its last line::

    200 {"accepted": n, "duplicates": d, "errors": [{"line": k, "code": …, "message": …}]}

``accepted`` counts the valid new events (stored, or valid and selected by no trail),
``duplicates`` those whose eventID was already stored, ``errors`` the rejected lines in order.
Refusals: 401 ``Unauthorized`` without a valid ``Authorization: Bearer <token>`` when
``[ingest] tokens`` are set (the token's name becomes the receipt's agent); 413 over
``[api] max_body_bytes`` (the listener enforces it); 503 while the daemon shuts down.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import trio

from trailseal.api.server import ApiServer, Request, Response, error_response
from trailseal.ingest.listener import Ingest
from trailseal.pipeline import Connection

log = logging.getLogger("trailseal.ingest")

PATH = "/v1/events"


class HttpIngest:
    """The ``POST /v1/events`` handler, feeding ``ingest``'s submissions channel."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def install(self, server: ApiServer) -> None:
        server.route("POST", PATH, self.handle)

    def _agent(self, request: Request) -> tuple[bool, str | None]:
        """(allowed, token name) for the request's bearer token."""
        tokens = self.ingest.config.tokens
        if not tokens:
            return True, None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False, None
        presented = token.strip().encode()
        agent = None
        for name, value in tokens.items():
            if hmac.compare_digest(value.encode(), presented):
                agent = name
        return agent is not None, agent

    async def handle(self, request: Request) -> Response:
        allowed, agent = self._agent(request)
        if not allowed:
            log.warning("refused POST %s from %s: no valid bearer token", PATH, request.peer)
            response = error_response(
                401,
                "Unauthorized",
                "send 'Authorization: Bearer <token>' with a token from [ingest.tokens]",
            )
            response.headers["www-authenticate"] = 'Bearer realm="trailseal"'
            return response
        if self.ingest.stopping:
            return _shutting_down()
        conn = Connection(request.peer, agent)
        try:
            lines = await self.ingest.submit_body(conn, request.body)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return _shutting_down()
        await conn.wait_settled()
        conn.finish()
        errors: list[dict[str, Any]] = []
        while (data := await conn.next_replies()) is not None:
            for line in data.splitlines():
                reply = json.loads(line)
                if "error" in reply:
                    errors.append(reply["error"])
        accepted = lines - len(errors) - conn.duplicates
        return Response.json(
            200, {"accepted": accepted, "duplicates": conn.duplicates, "errors": errors}
        )


def _shutting_down() -> Response:
    response = error_response(
        503, "ShuttingDown", "the daemon is shutting down; send the events again after it restarts"
    )
    response.headers["retry-after"] = "5"
    return response
