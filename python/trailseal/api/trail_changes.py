"""The CloudTrail API's trail changes: CreateTrail, UpdateTrail, DeleteTrail, StartLogging,
StopLogging, PutEventSelectors, GetEventSelectors, PutInsightSelectors, GetInsightSelectors.

Changes go through the daemon's :class:`trailseal.registry.TrailRegistry` (``ctx.state.trails``):
they take effect without a restart and persist in the data directory. Trails from the config file
are reported but not changed (``OperationNotPermittedException`` saying where to change them).
Parameters the daemon cannot honour (SNS topics, CloudWatch Logs, turning log file validation
off, organization trails made through the API) are refused with ``InvalidParameterException``
naming the parameter, rather than ignored.
"""

from __future__ import annotations

import json
from typing import Any

from trailseal import _core
from trailseal.api.operations import CallContext, ServiceError, operation
from trailseal.api.trails import check_trail_name, find_trail, trail_arn, trail_to_dict
from trailseal.delivery.layout import bucket_name_problem
from trailseal.registry import (
    ApiTrail,
    TrailRegistry,
    prefix_problem,
)

_UNSUPPORTED = {
    "SnsTopicName": "SNS notifications (use the trail's notify_url in the config file)",
    "CloudWatchLogsLogGroupArn": "CloudWatch Logs delivery",
    "CloudWatchLogsRoleArn": "CloudWatch Logs delivery",
}
INSIGHT_TYPES = ("ApiCallRateInsight", "ApiErrorRateInsight")


def _registry(ctx: CallContext) -> TrailRegistry:
    registry: TrailRegistry | None = ctx.state.trails
    if registry is None:
        raise ServiceError("OperationNotPermittedException", "trail changes are not available")
    return registry


def _string(params: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = params.get(key)
    if value is None:
        if required:
            raise ServiceError("InvalidParameterException", f"{key} is required")
        return None
    if not isinstance(value, str):
        raise ServiceError("InvalidParameterException", f"{key} must be a string")
    return value


def _boolean(params: dict[str, Any], key: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ServiceError("InvalidParameterException", f"{key} must be true or false")
    return value


def _apply_common(params: dict[str, Any], trail: ApiTrail) -> ApiTrail:
    """The parameters CreateTrail and UpdateTrail share, applied to ``trail``."""
    for key, what in _UNSUPPORTED.items():
        if params.get(key):
            raise ServiceError(
                "InvalidParameterException", f"{key}: trailseal does not support {what}"
            )
    if _boolean(params, "EnableLogFileValidation") is False:
        raise ServiceError(
            "InvalidParameterException",
            "EnableLogFileValidation: trailseal always signs digests; it cannot be turned off",
        )
    if _boolean(params, "IsOrganizationTrail"):
        raise ServiceError(
            "InvalidParameterException",
            "IsOrganizationTrail: organization trails are set in the config file "
            "(organization_id of a [trails.*] table)",
        )
    bucket = _string(params, "S3BucketName")
    if bucket is not None:
        problem = bucket_name_problem(bucket)
        if problem:
            raise ServiceError(
                "InvalidS3BucketNameException", f"{bucket!r} is not a valid bucket name: {problem}"
            )
        trail.bucket = bucket
    prefix = _string(params, "S3KeyPrefix")
    if prefix is not None:
        problem = prefix_problem(prefix)
        if problem:
            raise ServiceError("InvalidS3PrefixException", f"{prefix!r}: {problem}")
        trail.prefix = prefix
    multi = _boolean(params, "IsMultiRegionTrail")
    if multi is not None:
        trail.multi_region = multi
    kms = _string(params, "KmsKeyId")
    if kms is not None:
        trail.kms_key_id = kms
    return trail


def _check_destination(ctx: CallContext, trail: ApiTrail) -> None:
    buckets: str = ctx.state.config.api.trail_buckets
    if trail.prefix and buckets != "s3":
        raise ServiceError(
            "InvalidS3PrefixException",
            f"S3KeyPrefix: buckets of trails made through the API are local directories under "
            f"{buckets} ([api] trail_buckets), which take no key prefix",
        )
    if trail.kms_key_id and buckets != "s3":
        raise ServiceError(
            "InvalidKmsKeyIdException",
            f"KmsKeyId: local buckets under {buckets} ([api] trail_buckets) are not encrypted "
            "by S3",
        )


def _trail_response(ctx: CallContext, name: str) -> dict[str, Any]:
    """CreateTrail's and UpdateTrail's answer: the trail as DescribeTrails gives it, less the
    members those two operations do not return."""
    out = trail_to_dict(_registry(ctx).trails[name], ctx.state.config)
    for member in ("HomeRegion", "HasCustomEventSelectors", "HasInsightSelectors"):
        out.pop(member, None)
    return out


@operation("CreateTrail", write=True)
async def create_trail(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = _string(params, "Name", required=True)
    assert name is not None
    check_trail_name(name)
    if _string(params, "S3BucketName", required=True) == "":
        raise ServiceError("InvalidS3BucketNameException", "S3BucketName is empty")
    trail = _apply_common(params, ApiTrail(bucket=""))
    _check_destination(ctx, trail)
    await _registry(ctx).create(name, trail)
    return _trail_response(ctx, name)


@operation("UpdateTrail", write=True)
async def update_trail(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = find_trail(ctx.state, params.get("Name")).name

    def change(trail: ApiTrail) -> ApiTrail:
        trail = _apply_common(params, trail)
        _check_destination(ctx, trail)
        return trail

    await _registry(ctx).update(name, change)
    return _trail_response(ctx, name)


@operation("DeleteTrail", write=True)
async def delete_trail(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = find_trail(ctx.state, params.get("Name")).name
    await _registry(ctx).delete(name)
    return {}


@operation("StartLogging", write=True)
async def start_logging(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = find_trail(ctx.state, params.get("Name")).name
    await _registry(ctx).set_logging(name, True)
    return {}


@operation("StopLogging", write=True)
async def stop_logging(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = find_trail(ctx.state, params.get("Name")).name
    await _registry(ctx).set_logging(name, False)
    return {}


def _selectors_out(selectors_json: str) -> dict[str, Any]:
    doc = json.loads(selectors_json or "{}")
    if doc.get("advanced_event_selectors"):
        return {"AdvancedEventSelectors": doc["advanced_event_selectors"]}
    selectors = doc.get("event_selectors") or [
        {"ReadWriteType": "All", "IncludeManagementEvents": True, "DataResources": []}
    ]
    return {"EventSelectors": selectors}


@operation("PutEventSelectors", write=True)
async def put_event_selectors(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = find_trail(ctx.state, params.get("TrailName"), "TrailName").name
    basic = params.get("EventSelectors")
    advanced = params.get("AdvancedEventSelectors")
    if (basic is None) == (advanced is None):
        raise ServiceError(
            "InvalidParameterCombinationException",
            "give either EventSelectors or AdvancedEventSelectors, not both or neither",
        )
    doc = (
        {"event_selectors": basic} if basic is not None else {"advanced_event_selectors": advanced}
    )
    selectors_json = json.dumps(doc, separators=(",", ":"))
    try:
        _core.check_selectors(selectors_json)
    except ValueError as exc:
        raise ServiceError("InvalidEventSelectorsException", str(exc)) from None

    def change(trail: ApiTrail) -> ApiTrail:
        trail.selectors_json = selectors_json
        return trail

    await _registry(ctx).update(name, change)
    return {"TrailARN": trail_arn(ctx.state.config, name), **_selectors_out(selectors_json)}


@operation("GetEventSelectors")
async def get_event_selectors(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    trail = find_trail(ctx.state, params.get("TrailName"), "TrailName")
    return {
        "TrailARN": trail_arn(ctx.state.config, trail.name),
        **_selectors_out(trail.selectors_json),
    }


@operation("PutInsightSelectors", write=True)
async def put_insight_selectors(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = find_trail(ctx.state, params.get("TrailName"), "TrailName").name
    selectors = params.get("InsightSelectors")
    if not isinstance(selectors, list):
        raise ServiceError("InvalidInsightSelectorsException", "InsightSelectors must be a list")
    seen: list[dict[str, Any]] = []
    for i, item in enumerate(selectors):
        kind = item.get("InsightType") if isinstance(item, dict) else None
        if kind not in INSIGHT_TYPES or set(item) != {"InsightType"}:
            raise ServiceError(
                "InvalidInsightSelectorsException",
                f"InsightSelectors[{i}]: give {{InsightType: ApiCallRateInsight | "
                "ApiErrorRateInsight}}",
            )
        if item in seen:
            raise ServiceError(
                "InvalidInsightSelectorsException", f"InsightSelectors[{i}]: {kind} given twice"
            )
        seen.append({"InsightType": kind})

    def change(trail: ApiTrail) -> ApiTrail:
        trail.insight_selectors = seen
        return trail

    await _registry(ctx).update(name, change)
    return {"TrailARN": trail_arn(ctx.state.config, name), "InsightSelectors": seen}


@operation("GetInsightSelectors")
async def get_insight_selectors(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    trail = find_trail(ctx.state, params.get("TrailName"), "TrailName")
    selectors = _registry(ctx).insight_selectors(trail.name)
    if not selectors:
        raise ServiceError(
            "InsightNotEnabledException", f"Trail {trail.name} does not have Insights enabled"
        )
    return {"TrailARN": trail_arn(ctx.state.config, trail.name), "InsightSelectors": selectors}
