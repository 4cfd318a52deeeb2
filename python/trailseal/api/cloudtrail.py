"""The CloudTrail API front end (FORMATS.md §8): ``POST /`` in AWS JSON 1.1, signed with SigV4.

One request, in order (the first failure is the answer; nothing is done for a refused request):

1. SigV4 (:mod:`.sigv4`) against the access keys (:mod:`.access_keys`): 403 with
   ``MissingAuthenticationTokenException``, ``IncompleteSignatureException``,
   ``UnrecognizedClientException`` or ``InvalidSignatureException``.
2. ``X-Amz-Target: com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.<Operation>`` names
   an operation of :data:`trailseal.api.operations.OPERATIONS` (else 400
   ``UnknownOperationException``).
3. A ``read`` key calling an operation registered with ``write=True``: 400
   ``AccessDeniedException`` (botocore raises ``AccessDeniedException`` whatever the status; 400
   is what CloudTrail's JSON errors use).
4. The body is one JSON object (empty means ``{}``; else 400 ``SerializationException``).
5. The handler's result is the response object; a :class:`ServiceError` becomes
   ``{"__type": code, "message": …}`` with its status; any other exception 500
   ``InternalFailure`` and a log line with the request id.

Every response is ``application/x-amz-json-1.1`` with ``x-amzn-RequestId`` (uuid4). Result values
may be ``bytes`` (sent base64, the protocol's blob encoding) and ``datetime`` (sent as epoch
seconds). The modules that register operations are imported from :data:`OPERATION_MODULES`;
those not written yet are skipped.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trailseal.api import operations, sigv4
from trailseal.api.access_keys import AccessKeys
from trailseal.api.operations import CallContext, ServiceError
from trailseal.api.server import ApiServer, Request, Response
from trailseal.config import Config
from trailseal.delivery.destination import Destination
from trailseal.delivery.signer import Signer

log = logging.getLogger("trailseal.api")

TARGET_PREFIX = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
CONTENT_TYPE = "application/x-amz-json-1.1"
OPERATION_MODULES = (
    "trailseal.api.public_keys",
    "trailseal.api.lookup",
    "trailseal.api.trails",
    "trailseal.api.trail_changes",
)


def load_operations() -> list[str]:
    """Import every module that registers operations (skipping those that do not exist yet);
    return the names of the modules imported."""
    loaded = []
    for name in OPERATION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        loaded.append(name)
    return loaded


@dataclass
class ApiState:
    """What the operations work on (``ctx.state`` in a handler)."""

    config: Config
    signer: Signer
    data_dir: Path
    destinations: dict[str, Destination]
    access_keys: AccessKeys
    history: Any = None
    """The event history (LookupEvents), set by the daemon when it has one."""
    trails: Any = None
    """The trail registry (trail operations), set by the daemon when it has one."""


class CloudTrailApi:
    """The ``POST /`` handler."""

    def __init__(self, state: ApiState) -> None:
        self.state = state
        load_operations()

    def install(self, server: ApiServer) -> None:
        server.route("POST", "/", self.handle)

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            access_key_id = sigv4.verify(
                method=request.method,
                path=request.path,
                query=request.query,
                headers=request.headers,
                body=request.body,
                secrets=self.state.access_keys.secrets(),
                now=datetime.now(UTC),
            )
        except sigv4.SignatureError as exc:
            log.info("api: refused a request from %s: %s", request.peer, exc)
            return _error(exc.status, exc.code, exc.message, request_id)
        target = request.headers.get("x-amz-target", "")
        name = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        op = operations.OPERATIONS.get(name)
        if op is None:
            shown = target or "no X-Amz-Target header"
            return _error(
                400,
                "UnknownOperationException",
                f"unknown operation {shown!r}: expected X-Amz-Target {TARGET_PREFIX}<Operation> "
                f"with one of {', '.join(sorted(operations.OPERATIONS))}",
                request_id,
            )
        role = self.state.access_keys.role(access_key_id)
        if op.write and role != "admin":
            return _error(
                400,
                "AccessDeniedException",
                f"access key {access_key_id} has role {role!r}: {name} changes trails and needs "
                "an admin key",
                request_id,
            )
        try:
            params = json.loads(request.body) if request.body.strip() else {}
        except ValueError as exc:
            return _error(400, "SerializationException", f"the body is not JSON: {exc}", request_id)
        if not isinstance(params, dict):
            return _error(
                400, "SerializationException", "the body must be a JSON object", request_id
            )
        ctx = CallContext(access_key_id, role, request_id, self.state)
        try:
            result = await op.handler(ctx, params)
        except ServiceError as exc:
            return _error(exc.status, exc.code, exc.message, request_id)
        except Exception:
            log.exception("api: %s failed (request id %s)", name, request_id)
            return _error(
                500,
                "InternalFailure",
                f"the daemon failed to handle {name}; its log has the details (request id "
                f"{request_id})",
                request_id,
            )
        return _json(200, result, request_id)


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"cannot encode {type(value).__name__} in a CloudTrail response")


def _json(status: int, doc: Any, request_id: str) -> Response:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=_encode).encode()
    return Response(
        status, body, content_type=CONTENT_TYPE, headers={"x-amzn-RequestId": request_id}
    )


def _error(status: int, code: str, message: str, request_id: str) -> Response:
    return _json(status, {"__type": code, "message": message}, request_id)
