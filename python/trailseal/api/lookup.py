"""LookupEvents (FORMATS.md §8): CloudTrail's event-history query over :mod:`trailseal.history`.

Request members: ``LookupAttributes`` (at most one ``{AttributeKey, AttributeValue}``; keys
EventId, EventName, ReadOnly, Username, ResourceType, ResourceName, EventSource, AccessKeyId),
``StartTime``/``EndTime`` (epoch seconds, both inclusive), ``MaxResults`` (1-50, default 50),
``NextToken``, ``EventCategory`` (``insight`` for Insight events; absent: every other event).
Results are newest first (eventTime, then the order they were indexed in).

``NextToken`` is opaque to clients: base64url of ``{"q": <digest of the query's filters>,
"t": <eventTime ms>, "r": <row id>}``, the keyset cursor of the last event returned. It is bound
to its query (other filters → ``InvalidNextTokenException``; ``MaxResults`` may change between
pages) and stable while events are added: the next page holds exactly the matching events older
than the cursor, so pages never repeat or skip an event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from typing import Any

from trailseal import _core
from trailseal.api.operations import CallContext, ServiceError, operation

ATTRIBUTE_KEYS = (
    "EventId",
    "EventName",
    "ReadOnly",
    "Username",
    "ResourceType",
    "ResourceName",
    "EventSource",
    "AccessKeyId",
)
MAX_RESULTS = 50


def _time_ms(params: dict[str, Any], name: str, *, start: bool) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ServiceError(
            "ValidationException", f"{name} must be a timestamp in epoch seconds, got {value!r}"
        )
    ms = float(value) * 1000
    # Events have whole-second times: an inclusive bound with a fraction rounds inward.
    return math.ceil(ms) if start else math.floor(ms)


def _attribute(params: dict[str, Any]) -> tuple[str, str] | None:
    attrs = params.get("LookupAttributes")
    if attrs is None or attrs == []:
        return None
    if not isinstance(attrs, list):
        raise ServiceError("InvalidLookupAttributesException", "LookupAttributes must be a list")
    if len(attrs) > 1:
        raise ServiceError(
            "InvalidLookupAttributesException",
            f"LookupAttributes holds {len(attrs)} attributes; at most one is allowed",
        )
    attr = attrs[0]
    key = attr.get("AttributeKey") if isinstance(attr, dict) else None
    value = attr.get("AttributeValue") if isinstance(attr, dict) else None
    if key not in ATTRIBUTE_KEYS:
        raise ServiceError(
            "InvalidLookupAttributesException",
            f"AttributeKey {key!r} is not one of {', '.join(ATTRIBUTE_KEYS)}",
        )
    if not isinstance(value, str) or not 1 <= len(value) <= 2000:
        raise ServiceError(
            "InvalidLookupAttributesException",
            f"AttributeValue of {key} must be a string of 1 to 2000 characters",
        )
    return key, value


def _query_digest(
    attribute: tuple[str, str] | None, start: int | None, end: int | None, insight: bool
) -> str:
    text = json.dumps([attribute, start, end, insight], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(digest: str, cursor: tuple[int, int]) -> str:
    raw = json.dumps({"q": digest, "t": cursor[0], "r": cursor[1]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: Any, digest: str) -> tuple[int, int]:
    """The cursor in ``token``; InvalidNextTokenException when it is not one of ours or belongs
    to another query."""
    bad = ServiceError(
        "InvalidNextTokenException",
        "NextToken is not valid: pass the NextToken of the previous page of the same query "
        "(same LookupAttributes, StartTime, EndTime and EventCategory)",
    )
    if not isinstance(token, str) or not token or len(token) > 512:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if (
        not isinstance(data, dict)
        or data.get("q") != digest
        or not isinstance(data.get("t"), int)
        or not isinstance(data.get("r"), int)
    ):
        raise bad
    return data["t"], data["r"]


def event_member(ev: _core.HistoryEvent) -> dict[str, Any]:
    """One ``Events`` entry of the response, members absent when CloudTrail omits them."""
    out: dict[str, Any] = {
        "EventId": ev.event_id,
        "EventName": ev.event_name,
        "ReadOnly": "true" if ev.read_only else "false",
    }
    if ev.access_key_id is not None:
        out["AccessKeyId"] = ev.access_key_id
    out["EventTime"] = ev.event_time
    out["EventSource"] = ev.event_source
    if ev.username is not None:
        out["Username"] = ev.username
    resources = []
    for rtype, arn in ev.resources:
        r = {}
        if rtype is not None:
            r["ResourceType"] = rtype
        if arn is not None:
            r["ResourceName"] = arn
        resources.append(r)
    out["Resources"] = resources
    out["CloudTrailEvent"] = ev.cloudtrail_event
    return out


async def lookup_events(history: Any, params: dict[str, Any]) -> dict[str, Any]:
    """LookupEvents against an :class:`trailseal.history.EventHistory` (``history``)."""
    import trio

    attribute = _attribute(params)
    start = _time_ms(params, "StartTime", start=True)
    end = _time_ms(params, "EndTime", start=False)
    if start is not None and end is not None and start > end:
        raise ServiceError(
            "InvalidTimeRangeException",
            f"StartTime ({params['StartTime']}) is after EndTime ({params['EndTime']})",
        )
    max_results = params.get("MaxResults", MAX_RESULTS)
    if (
        isinstance(max_results, bool)
        or not isinstance(max_results, int)
        or not 1 <= max_results <= MAX_RESULTS
    ):
        raise ServiceError(
            "InvalidMaxResultsException",
            f"MaxResults must be an integer from 1 to {MAX_RESULTS}, got {max_results!r}",
        )
    category = params.get("EventCategory")
    if category is not None and category != "insight":
        raise ServiceError(
            "InvalidEventCategoryException",
            f'EventCategory {category!r} is not valid: use "insight" or leave it out',
        )
    insight = category == "insight"
    digest = _query_digest(attribute, start, end, insight)
    after = None
    if params.get("NextToken") is not None:
        after = decode_token(params["NextToken"], digest)
    events, cursor = await trio.to_thread.run_sync(
        lambda: history.core.lookup(
            attribute_key=attribute[0] if attribute else None,
            attribute_value=attribute[1] if attribute else None,
            start_ms=start,
            end_ms=end,
            insight=insight,
            limit=max_results,
            after=after,
        )
    )
    result: dict[str, Any] = {"Events": [event_member(ev) for ev in events]}
    if cursor is not None:
        result["NextToken"] = encode_token(digest, cursor)
    return result


@operation("LookupEvents")
async def lookup_events_operation(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    history = getattr(ctx.state, "history", None)
    if history is None:
        raise ServiceError(
            "OperationNotPermittedException",
            "the event history is disabled on this daemon ([history] enabled = false)",
        )
    return await lookup_events(history, params)
