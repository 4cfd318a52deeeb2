"""An independent pure-Python reading of CloudTrail's event selector semantics.

Written from CloudTrail's documentation (PutEventSelectors, EventSelector, DataResource,
AdvancedFieldSelector), not from the Rust core, so that tests can cross-check the core's
``trailseal_core::select`` against it. It decides only whether an event is logged; it assumes
the selectors were already accepted (validation is the core's job, pinned by the vectors).

Rules as read from the documentation:

* no selectors: management events, read and write; nothing else;
* an event is logged when any selector matches;
* basic: ReadWriteType (default All) must fit ``readOnly``; management events need
  IncludeManagementEvents (default true) and a source not in ExcludeManagementEventSources;
  data events need a resource of a DataResources Type whose ARN is selected by a value
  (``arn:<partition>:<service>`` = all; S3 values are prefixes; Lambda and DynamoDB ARNs exact);
* advanced: eventCategory must equal the selector's; every field selector holds; in a field
  selector every operator holds (positive: some value matches; negative: no value matches);
  resources.type and resources.ARN are judged on one resource entry; a missing field fails a
  positive operator and passes a negative one; a missing sessionCredentialFromConsole is
  "false".
"""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]
_SERVICE = {
    "AWS::S3::Object": "s3",
    "AWS::Lambda::Function": "lambda",
    "AWS::DynamoDB::Table": "dynamodb",
}


READ_ONLY_PREFIXES = (
    "Get",
    "List",
    "Describe",
    "Head",
    "Lookup",
    "Search",
    "Scan",
    "Query",
    "BatchGet",
)


def defaulted(e: dict[str, Any], *, account: str, region: str) -> dict[str, Any]:
    """The fields selectors read, with FORMATS.md §1's defaults (what the core selects on):
    ``account``/``region`` are the daemon's ``account_id``/``region``."""
    out = dict(e)
    out.setdefault("eventCategory", "Management")
    out.setdefault("eventType", "AwsApiCall")
    out.setdefault("readOnly", e["eventName"].startswith(READ_ONLY_PREFIXES))
    out.setdefault("awsRegion", region)
    out.setdefault("recipientAccountId", account)
    return out


def logged(selectors: dict[str, Any], event: Event) -> bool:
    """Would a trail with ``selectors`` (the core's JSON object, as a dict) log ``event``?"""
    if "event_selectors" in selectors:
        return any(_basic(sel, event) for sel in selectors["event_selectors"])
    if "advanced_event_selectors" in selectors:
        return any(_advanced(sel, event) for sel in selectors["advanced_event_selectors"])
    return bool(event["eventCategory"] == "Management")


def _basic(sel: dict[str, Any], event: Event) -> bool:
    rw = sel.get("ReadWriteType", "All")
    if rw == "ReadOnly" and not event["readOnly"]:
        return False
    if rw == "WriteOnly" and event["readOnly"]:
        return False
    category = event["eventCategory"]
    if category == "Management":
        if not sel.get("IncludeManagementEvents", True):
            return False
        return event["eventSource"] not in sel.get("ExcludeManagementEventSources", [])
    if category != "Data":
        return False
    for data_resource in sel.get("DataResources", []):
        for resource in event.get("resources") or []:
            if resource.get("type") != data_resource["Type"] or "ARN" not in resource:
                continue
            if any(
                _arn_selected(data_resource["Type"], v, resource["ARN"])
                for v in data_resource["Values"]
            ):
                return True
    return False


def _arn_selected(resource_type: str, value: str, arn: str) -> bool:
    parts = value.split(":")
    if len(parts) == 3 and parts[0] == "arn" and parts[2] == _SERVICE[resource_type]:
        return True  # arn:<partition>:<service>: every resource of the type
    if resource_type == "AWS::S3::Object":
        return arn[: len(value)] == value
    return arn == value


def _field_value(name: str, event: Event) -> str | None:
    if name == "readOnly":
        return "true" if event["readOnly"] else "false"
    if name == "userIdentity.arn":
        identity = event.get("userIdentity")
        return identity.get("arn") if isinstance(identity, dict) else None
    if name == "sessionCredentialFromConsole":
        return event.get(name) or "false"
    value = event.get(name)
    return value if isinstance(value, str) else None


def _operator_holds(op: str, targets: list[str], value: str | None) -> bool:
    negative = op.startswith("Not")
    if value is None:
        return negative
    base = op[3:] if negative else op
    if base == "Equals":
        hit = value in targets
    elif base == "StartsWith":
        hit = any(value.startswith(t) for t in targets)
    else:
        hit = any(value.endswith(t) for t in targets)
    return hit != negative


def _field_holds(fs: dict[str, Any], value: str | None) -> bool:
    return all(_operator_holds(op, vals, value) for op, vals in fs.items() if op != "Field")


def _advanced(sel: dict[str, Any], event: Event) -> bool:
    per_resource = []
    for fs in sel["FieldSelectors"]:
        name = fs["Field"]
        if name in ("resources.type", "resources.ARN"):
            per_resource.append(fs)
        elif not _field_holds(fs, _field_value(name, event)):
            return False
    if not per_resource:
        return True
    key = {"resources.type": "type", "resources.ARN": "ARN"}
    return any(
        all(_field_holds(fs, resource.get(key[fs["Field"]])) for fs in per_resource)
        for resource in event.get("resources") or []
    )
