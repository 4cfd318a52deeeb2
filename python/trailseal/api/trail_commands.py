"""``trailseal trails list|create|delete|start|stop|selectors``: trail management over the daemon's
CloudTrail API (the same calls as ``aws cloudtrail …``), with the client of :mod:`.connect`.

Output: ``list`` prints a table on a terminal and JSON otherwise (``--output`` chooses); the
other commands print the API's JSON answer. A refused call prints CloudTrail's exception name
and message and exits 1; a daemon that cannot be reached exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trailseal.api.connect import cloudtrail_client
from trailseal.errors import TrailsealError


def add_parser(sub: Any) -> None:
    trails = sub.add_parser(
        "trails",
        help="list, create, delete, start and stop trails over the API",
        description="Manage trails through the daemon's CloudTrail API. Trails made here take "
        "effect at once and persist in the data directory; trails of the config file are listed "
        "but change only in the config file.",
    )
    trails.add_argument("--config", type=Path, help="the daemon's config file")
    trails.add_argument("--endpoint-url", help="the API's URL (default: [api] listen)")
    trails_sub = trails.add_subparsers(dest="trails_command", required=True, metavar="SUBCOMMAND")
    listing = trails_sub.add_parser("list", help="every trail with its status")
    listing.add_argument(
        "--output", choices=("json", "table"), help="default: table on a terminal, else json"
    )
    create = trails_sub.add_parser("create", help="make a trail (CreateTrail)")
    create.add_argument("name")
    create.add_argument("--s3-bucket-name", required=True, help="its bucket ([api] trail_buckets)")
    create.add_argument("--s3-key-prefix", help='key prefix (with [api] trail_buckets = "s3")')
    create.add_argument(
        "--single-region",
        action="store_true",
        help="take only events of the daemon's home region (default: every region)",
    )
    for name, text in (
        ("delete", "delete a trail: deliver what it holds, final digest (DeleteTrail)"),
        ("start", "start logging (StartLogging)"),
        ("stop", "stop logging: deliver what it holds, final digest (StopLogging)"),
    ):
        trails_sub.add_parser(name, help=text).add_argument("name")
    selectors = trails_sub.add_parser(
        "selectors",
        help="show a trail's event selectors, or set them",
        description="Without --set, print the trail's event selectors (GetEventSelectors). With "
        "--set, replace them (PutEventSelectors) by the JSON given: a list of advanced event "
        'selectors, or {"EventSelectors": [...]} / {"AdvancedEventSelectors": [...]}.',
    )
    selectors.add_argument("name")
    selectors.add_argument("--set", metavar="JSON", help="the new selectors")


def _selectors_request(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise TrailsealError(f"--set: not JSON: {exc}") from None
    if isinstance(value, list):
        return {"AdvancedEventSelectors": value}
    if isinstance(value, dict) and len(value) == 1:
        ((key, selectors),) = value.items()
        if key in ("EventSelectors", "AdvancedEventSelectors"):
            return {key: selectors}
    raise TrailsealError(
        '--set: give a list of advanced event selectors, or {"EventSelectors": [...]} or '
        '{"AdvancedEventSelectors": [...]}'
    )


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("Name", "Logging", "Bucket", "Prefix", "Multi-region", "Selectors")
    for row in rows:
        table.add_row(
            row["Name"],
            "yes" if row["IsLogging"] else "no",
            row.get("S3BucketName", ""),
            row.get("S3KeyPrefix", ""),
            "yes" if row.get("IsMultiRegionTrail") else "no",
            "custom" if row.get("HasCustomEventSelectors") else "all management",
        )
    Console().print(table)


def _run(args: argparse.Namespace) -> Any:
    ct = cloudtrail_client(args.config, endpoint_url=args.endpoint_url)
    command = args.trails_command
    if command == "list":
        rows = ct.describe_trails()["trailList"]
        for row in rows:
            row["IsLogging"] = ct.get_trail_status(Name=row["Name"])["IsLogging"]
        output = args.output or ("table" if sys.stdout.isatty() else "json")
        if output == "table":
            _table(rows)
            return None
        return {"trailList": rows}
    if command == "create":
        request: dict[str, Any] = {
            "Name": args.name,
            "S3BucketName": args.s3_bucket_name,
            "IsMultiRegionTrail": not args.single_region,
        }
        if args.s3_key_prefix:
            request["S3KeyPrefix"] = args.s3_key_prefix
        return ct.create_trail(**request)
    if command == "delete":
        return ct.delete_trail(Name=args.name)
    if command == "start":
        return ct.start_logging(Name=args.name)
    if command == "stop":
        return ct.stop_logging(Name=args.name)
    if command == "selectors":
        if args.set is None:
            return ct.get_event_selectors(TrailName=args.name)
        return ct.put_event_selectors(TrailName=args.name, **_selectors_request(args.set))
    raise AssertionError(command)  # pragma: no cover - argparse rejects unknown commands


def main(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"trailseal trails {args.trails_command}"
    try:
        result = _run(args)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        print(f"{where}: {error.get('Code')}: {error.get('Message')}", file=sys.stderr)
        return 1
    except (BotoCoreError, TrailsealError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        result.pop("ResponseMetadata", None)
        if result:  # like the AWS CLI, nothing for an empty answer (delete, start, stop)
            print(json.dumps(result, indent=2, default=str))
    return 0
