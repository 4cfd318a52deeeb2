"""The CloudTrail API's operations (FORMATS.md §8): the registry the AWS JSON 1.1 front end
dispatches to, and the error every operation raises.

An operation is ``async def handler(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]``
registered with :func:`operation`; ``params`` is the request's decoded JSON object, the result is
encoded as the response's JSON object. A handler raises :class:`ServiceError` with CloudTrail's
exception name (``InvalidLookupAttributesException``, ``TrailNotFoundException`` …): the front
end turns it into HTTP 400 ``{"__type": code, "message": message}``. Operations registered with
``write=True`` change state and are refused (``AccessDeniedException``) for ``read`` keys.

Modules that define operations are imported by :mod:`trailseal.api.cloudtrail` so that the
registry is complete before the first request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from trailseal.errors import TrailsealError


class ServiceError(TrailsealError):
    """A request CloudTrail would refuse: ``code`` is CloudTrail's exception name."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class CallContext:
    """Who is calling, and the daemon's state the operations work on."""

    access_key_id: str
    role: str
    """"admin" or "read"."""
    request_id: str
    state: Any
    """The daemon's :class:`trailseal.api.cloudtrail.ApiState` (typed there; Any here so that this
    module imports nothing of the daemon's)."""


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Operation:
    name: str
    handler: Handler
    write: bool


OPERATIONS: dict[str, Operation] = {}


def operation(name: str, *, write: bool = False) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the CloudTrail operation ``name`` (e.g. "LookupEvents")."""

    def register(handler: Handler) -> Handler:
        if name in OPERATIONS:
            raise RuntimeError(f"operation {name} registered twice")
        OPERATIONS[name] = Operation(name, handler, write)
        return handler

    return register
