"""The CloudTrail API's trail operations (FORMATS.md §8): DescribeTrails, GetTrail, ListTrails and
GetTrailStatus.

A trail is described exactly as ``aws cloudtrail validate-logs`` needs to find its digests:
``TrailARN`` = ``arn:aws:cloudtrail:<home region>:<account>:trail/<name>``, ``S3BucketName`` (the
bucket of an ``s3://`` destination, or the last path component of a ``file://`` directory, the
same name digests carry as ``digestS3Bucket``) and ``S3KeyPrefix`` (absent when there is none).
:func:`trail_to_dict` builds that description from a :class:`~trailseal.config.TrailConfig` alone,
so the trail write operations can reuse it.

Names follow CloudTrail's rules (:func:`check_trail_name`): a malformed name is
``InvalidTrailNameException``, a malformed trail ARN ``CloudTrailARNInvalidException``; a
well-formed name or ARN of a trail this daemon does not have is ``TrailNotFoundException``
(GetTrail, GetTrailStatus) or simply left out (DescribeTrails, as CloudTrail does).

Every trail of a daemon has the daemon's ``region`` as its home region, so there are no shadow
trails: ``includeShadowTrails`` is accepted and changes nothing.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import trio

from trailseal import metrics
from trailseal.api.operations import CallContext, ServiceError, operation
from trailseal.config import Config, TrailConfig
from trailseal.delivery.digest import parse_time
from trailseal.delivery.s3 import parse_s3_url
from trailseal.delivery.uploader import DeliveryState

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_ADJACENT_RE = re.compile(r"[._-]{2}")
_IP_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_ARN_RE = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):cloudtrail:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"trail/(?P<name>.+)"
)


def trail_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid CloudTrail trail name, or None when it is."""
    if not 3 <= len(name) <= 128:
        return f"it has {len(name)} characters; a trail name has 3 to 128"
    if not _NAME_RE.fullmatch(name):
        return (
            "a trail name contains only ASCII letters, digits, '.', '_' and '-', and starts and "
            "ends with a letter or digit"
        )
    if _ADJACENT_RE.search(name):
        return "a trail name has no two adjacent '.', '_' or '-' (like 'my-_trail' or 'my--trail')"
    if _IP_RE.fullmatch(name):
        return "a trail name must not look like an IP address"
    return None


def check_trail_name(name: str) -> None:
    """Raise ``InvalidTrailNameException`` unless ``name`` follows CloudTrail's naming rules."""
    problem = trail_name_problem(name)
    if problem is not None:
        raise ServiceError(
            "InvalidTrailNameException", f"Trail name {name!r} is not valid: {problem}"
        )


def trail_arn(config: Config, name: str) -> str:
    return f"arn:aws:cloudtrail:{config.daemon.region}:{config.daemon.account_id}:trail/{name}"


def name_from_request(value: Any, what: str = "Name") -> str:
    """The trail name a request gives as a name or a trail ARN (the ARN's account and region are
    checked against the trail's by the caller, through :func:`find_trail`)."""
    if not isinstance(value, str) or not value:
        raise ServiceError("InvalidTrailNameException", f"{what} must be a trail name or ARN")
    if value.startswith("arn:"):
        m = _ARN_RE.fullmatch(value)
        if m is None or trail_name_problem(m["name"]) is not None:
            raise ServiceError(
                "CloudTrailARNInvalidException",
                f"{value!r} is not a valid trail ARN; a trail ARN looks like "
                "arn:aws:cloudtrail:<region>:<12-digit account>:trail/<name>",
            )
        return m["name"]
    check_trail_name(value)
    return value


def destination_bucket_and_prefix(trail: TrailConfig, host_id: str) -> tuple[str, str]:
    """The ``S3BucketName`` and ``S3KeyPrefix`` ("" for none) of a trail's destination: an
    ``s3://`` URL's bucket and prefix, or a ``file://`` directory's last path component (the
    ``digestS3Bucket`` of its digests, FORMATS.md §5) and no prefix."""
    if trail.destination.startswith("s3://"):
        return parse_s3_url(trail.destination, host_id)
    path = unquote(urlsplit(trail.destination).path).replace("{host_id}", host_id)
    return Path(path).name, ""


def _has_custom_selectors(trail: TrailConfig) -> bool:
    try:
        selectors = json.loads(trail.selectors_json)
    except ValueError:
        return False
    return isinstance(selectors, dict) and any(selectors.values())


def trail_to_dict(
    trail: TrailConfig, config: Config, *, has_insight_selectors: bool = False
) -> dict[str, Any]:
    """The trail as CloudTrail's ``Trail`` structure (DescribeTrails, GetTrail, CreateTrail …)."""
    bucket, prefix = destination_bucket_and_prefix(trail, config.daemon.host_id)
    out: dict[str, Any] = {
        "Name": trail.name,
        "S3BucketName": bucket,
    }
    if prefix:
        out["S3KeyPrefix"] = prefix
    out.update(
        {
            "IncludeGlobalServiceEvents": True,
            "IsMultiRegionTrail": trail.multi_region,
            "HomeRegion": config.daemon.region,
            "TrailARN": trail_arn(config, trail.name),
            "LogFileValidationEnabled": True,
            "HasCustomEventSelectors": _has_custom_selectors(trail),
            "HasInsightSelectors": has_insight_selectors,
            "IsOrganizationTrail": bool(trail.organization_id),
        }
    )
    if trail.sse == "aws:kms" and trail.kms_key_id:
        out["KmsKeyId"] = trail.kms_key_id
    return out


def current_trails(state: Any) -> dict[str, TrailConfig]:
    """The daemon's trails by name (the one place that knows where they are kept)."""
    registry = getattr(state, "trails", None)
    if registry is not None:
        listed: dict[str, TrailConfig] = registry.listed()
        return listed
    trails: dict[str, TrailConfig] = state.config.trails
    return trails


def find_trail(state: Any, value: Any, what: str = "Name") -> TrailConfig:
    """The trail a request names (by name or ARN); ``TrailNotFoundException`` when there is
    none, including an ARN of another account or region."""
    name = name_from_request(value, what)
    config: Config = state.config
    trail = current_trails(state).get(name)
    if trail is None or (value.startswith("arn:") and value != trail_arn(config, name)):
        raise ServiceError(
            "TrailNotFoundException",
            f"Unknown trail: {value} for the user: {config.daemon.account_id}",
        )
    return trail


@operation("DescribeTrails")
async def describe_trails(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    config: Config = ctx.state.config
    names = params.get("trailNameList") or []
    if not isinstance(names, list):
        raise ServiceError("InvalidTrailNameException", "trailNameList must be a list of names")
    include_shadow = params.get("includeShadowTrails", True)
    if not isinstance(include_shadow, bool):
        raise ServiceError("InvalidParameterException", "includeShadowTrails must be a boolean")
    trails = current_trails(ctx.state)
    if not names:
        chosen = list(trails.values())
    else:
        chosen = []
        for value in names:
            name = name_from_request(value, "trailNameList")
            trail = trails.get(name)
            if trail is None or (value.startswith("arn:") and value != trail_arn(config, name)):
                continue
            if trail not in chosen:
                chosen.append(trail)
    return {
        "trailList": [
            trail_to_dict(t, config, has_insight_selectors=_has_insights(ctx.state, t.name))
            for t in sorted(chosen, key=lambda t: t.name)
        ]
    }


def _has_insights(state: Any, name: str) -> bool:
    registry = getattr(state, "trails", None)
    return registry is not None and bool(registry.insight_selectors(name))


@operation("GetTrail")
async def get_trail(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    trail = find_trail(ctx.state, params.get("Name"))
    insights = _has_insights(ctx.state, trail.name)
    return {"Trail": trail_to_dict(trail, ctx.state.config, has_insight_selectors=insights)}


@operation("ListTrails")
async def list_trails(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    config: Config = ctx.state.config
    return {
        "Trails": [
            {"TrailARN": trail_arn(config, name), "Name": name, "HomeRegion": config.daemon.region}
            for name in sorted(current_trails(ctx.state))
        ]
    }


def _latest_digest_end(state_dir: Path) -> int | None:
    """The newest ``digestEndTime`` (epoch seconds) of the trail's delivered digests (blocking)."""
    streams = DeliveryState(state_dir).read_digests().get("streams", {})
    ends = [
        parse_time(info["last"]["end"]) for info in streams.values() if info.get("last") is not None
    ]
    return max(ends, default=None)


@operation("GetTrailStatus")
async def get_trail_status(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    trail = find_trail(ctx.state, params.get("Name"))
    config: Config = ctx.state.config
    state_dir = config.daemon.data_dir / "state" / trail.name
    digest_end = await trio.to_thread.run_sync(_latest_digest_end, state_dir)
    health = metrics.HEALTH.trail(trail.name)
    registry = getattr(ctx.state, "trails", None)
    logging_on = registry is None or registry.is_logging(trail.name)
    changed = metrics.HEALTH.started if registry is None else registry.logging_changed(trail.name)
    out: dict[str, Any] = {"IsLogging": logging_on}
    out["StartLoggingTime" if logging_on else "StopLoggingTime"] = int(changed)
    if health.last_delivery is not None:
        out["LatestDeliveryTime"] = int(health.last_delivery)
    if digest_end is not None:
        out["LatestDigestDeliveryTime"] = digest_end
    if health.failing and health.last_error is not None:
        out["LatestDeliveryError"] = health.last_error
        out["LatestDigestDeliveryError"] = health.last_error
    attempts = [t for t in (health.last_delivery, health.last_error_at) if t is not None]
    if attempts:
        out["LatestDeliveryAttemptTime"] = _iso(max(attempts))
        succeeded = health.last_delivery
        out["LatestDeliveryAttemptSucceeded"] = _iso(succeeded) if succeeded is not None else ""
    out["TimeLoggingStarted" if logging_on else "TimeLoggingStopped"] = _iso(changed)
    return out


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
