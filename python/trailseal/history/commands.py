"""``trailseal lookup`` (the AWS CLI's ``cloudtrail lookup-events``, against the daemon's API) and
``trailseal history rebuild`` (the event history rebuilt from delivered log files).

``lookup`` takes the AWS CLI's options: ``--lookup-attributes AttributeKey=K,AttributeValue=V``
(or the JSON form), ``--start-time``/``--end-time`` (ISO 8601 or epoch seconds),
``--max-results`` (the total to print; pages of at most 50 are fetched with NextToken
underneath), ``--event-category insight``. Output: ``{"Events": [...]}`` as the AWS CLI prints it
(``--output json``, the default when standard output is not a terminal; a ``NextToken`` member
when more remain), or a table on a terminal (``--output table``).

``history rebuild`` needs the daemon stopped (it takes the data directory's lock): it reads every
log file under ``AWSLogs/`` of the destinations (``--destination``, else every trail's in the
config) into a fresh database beside the old one, then swaps it in (the old file and its WAL are
removed first, then the new one is renamed into place). The next start re-indexes what is still
in the spool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trailseal.api.lookup import ATTRIBUTE_KEYS
from trailseal.errors import TrailsealError


def add_parsers(sub: Any) -> None:
    """Add ``lookup`` and ``history`` to the ``trailseal`` subcommands."""
    lookup = sub.add_parser(
        "lookup",
        help="look up events in the daemon's event history (LookupEvents)",
        description="Look up events in the event history through the daemon's CloudTrail API, "
        "with the options of `aws cloudtrail lookup-events`. Newest first.",
    )
    lookup.add_argument(
        "--lookup-attributes",
        nargs="+",
        default=[],
        metavar="AttributeKey=KEY,AttributeValue=VALUE",
        help=f"at most one attribute; keys: {', '.join(ATTRIBUTE_KEYS)}",
    )
    lookup.add_argument("--start-time", help="ISO 8601 time or epoch seconds (inclusive)")
    lookup.add_argument("--end-time", help="ISO 8601 time or epoch seconds (inclusive)")
    lookup.add_argument(
        "--max-results", type=int, help="print at most this many events (default: all)"
    )
    lookup.add_argument("--event-category", choices=["insight"], help="Insight events only")
    lookup.add_argument("--output", choices=["json", "table"], help="default: table on a terminal")
    lookup.add_argument("--config", type=Path, help="the daemon's config file")
    lookup.add_argument("--endpoint-url", help="the API's URL (default: [api] listen)")
    lookup.add_argument("--region", help="signing region (any region verifies)")

    history = sub.add_parser("history", help="the event history")
    history_sub = history.add_subparsers(dest="history_command", required=True, metavar="SUB")
    rebuild = history_sub.add_parser(
        "rebuild",
        help="rebuild the event history from delivered log files (daemon stopped)",
        description="Rebuild <data_dir>/history/events.db from the log files in the "
        "destinations. The daemon must be stopped.",
    )
    rebuild.add_argument("--config", type=Path, help="the daemon's config file")
    rebuild.add_argument(
        "--destination",
        action="append",
        default=[],
        help="file:///dir or s3://bucket/prefix (default: every trail's destination); repeatable",
    )
    rebuild.add_argument("--s3-endpoint-url", default="", metavar="URL", help="S3 server")
    rebuild.add_argument("--no-progress", action="store_true", help="never show a progress bar")


# ---------------------------------------------------------------------------------------------
# lookup


def parse_attribute(text: str) -> dict[str, str]:
    """``AttributeKey=K,AttributeValue=V`` or ``{"AttributeKey": …, "AttributeValue": …}``."""
    if text.lstrip().startswith(("{", "[")):
        value = json.loads(text)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, dict):
            raise ValueError("expected one {AttributeKey, AttributeValue} object")
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    key, sep, rest = text.partition(",AttributeValue=")
    if not sep or not key.startswith("AttributeKey="):
        raise ValueError(
            f"{text!r} is not AttributeKey=KEY,AttributeValue=VALUE (keys: "
            f"{', '.join(ATTRIBUTE_KEYS)})"
        )
    out["AttributeKey"] = key.removeprefix("AttributeKey=")
    out["AttributeValue"] = rest
    return out


def parse_time(text: str) -> datetime:
    """ISO 8601 (a naive time is UTC; a date alone is its midnight) or epoch seconds."""
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _jsonable(ev: dict[str, Any]) -> dict[str, Any]:
    out = dict(ev)
    t = out.get("EventTime")
    if isinstance(t, datetime):
        out["EventTime"] = t.astimezone(UTC).isoformat()
    return out


def lookup_main(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from trailseal.api.connect import cloudtrail_client

    def fail(message: str, code: int = 2) -> int:
        print(f"trailseal lookup: {message}", file=sys.stderr)
        return code

    params: dict[str, Any] = {}
    try:
        attrs = [parse_attribute(a) for a in args.lookup_attributes]
        if attrs:
            params["LookupAttributes"] = attrs
        if args.start_time:
            params["StartTime"] = parse_time(args.start_time)
        if args.end_time:
            params["EndTime"] = parse_time(args.end_time)
    except ValueError as exc:
        return fail(f"{exc}")
    if args.event_category:
        params["EventCategory"] = args.event_category
    if args.max_results is not None and args.max_results < 1:
        return fail("--max-results must be at least 1")
    try:
        client = cloudtrail_client(args.config, endpoint_url=args.endpoint_url, region=args.region)
        events: list[dict[str, Any]] = []
        next_token: str | None = None
        while True:
            page_size = 50
            if args.max_results is not None:
                page_size = min(50, args.max_results - len(events))
            call = dict(params, MaxResults=page_size)
            if next_token:
                call["NextToken"] = next_token
            page = client.lookup_events(**call)
            events += page["Events"]
            next_token = page.get("NextToken")
            if not next_token or (args.max_results is not None and len(events) >= args.max_results):
                break
    except ClientError as exc:
        err = exc.response.get("Error", {})
        return fail(f"{err.get('Code', 'Error')}: {err.get('Message', exc)}", 1)
    except (BotoCoreError, TrailsealError) as exc:
        return fail(str(exc))
    output = args.output or ("table" if sys.stdout.isatty() else "json")
    if output == "json":
        doc: dict[str, Any] = {"Events": [_jsonable(e) for e in events]}
        if next_token:
            doc["NextToken"] = next_token
        print(json.dumps(doc, indent=4, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(events)} events" + (" (more remain)" if next_token else ""))
    for column in ("EventTime", "EventName", "EventSource", "Username", "ReadOnly", "EventId"):
        table.add_column(column)
    for e in events:
        t = e.get("EventTime")
        when = t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if isinstance(t, datetime) else ""
        table.add_row(
            when,
            e.get("EventName", ""),
            e.get("EventSource", ""),
            e.get("Username", ""),
            e.get("ReadOnly", ""),
            e.get("EventId", ""),
        )
    Console().print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# history rebuild


def log_file_keys(keys: list[str]) -> list[tuple[str, str]]:
    """(key, compression) of the log files among a destination's keys (not digests)."""
    out = []
    for key in keys:
        if "/CloudTrail-Digest/" in key:
            continue
        if "/CloudTrail/" not in key and "/CloudTrail-Insight/" not in key:
            continue
        if key.endswith(".json.zst"):
            out.append((key, "zstd"))
        elif key.endswith(".json.gz"):
            out.append((key, "gzip"))
    return out


def rebuild(
    data_dir: Path, destinations: list[Any], *, progress: bool = False
) -> tuple[int, int, int]:
    """Rebuild the history of ``data_dir`` from ``destinations`` (the daemon must be stopped and
    the caller hold the data dir lock). Returns (log files, events read, events stored)."""
    from trailseal import _core
    from trailseal.history import database_path, files_dir

    path = database_path(data_dir)
    fresh = path.with_name(path.name + ".rebuild")
    for leftover in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
        leftover.unlink(missing_ok=True)
    history = _core.History(str(fresh))
    files = events = 0
    work = []
    for dest in destinations:
        prefix = f"{dest.prefix}/" if dest.prefix else ""
        for key, compression in log_file_keys(dest.list_keys(prefix + "AWSLogs/")):
            work.append((dest, key, compression))
    bar: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("indexing log files", total=len(work))
    try:
        for dest, key, compression in work:
            try:
                n, _ = history.add_log(dest.get_bytes(key), compression)
            except _core.CoreError as exc:
                raise TrailsealError(f"{dest.url}: {key}: {exc}") from None
            files += 1
            events += n
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    stored = history.count()
    del history  # closes the database (its WAL is checkpointed and removed)
    for old in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        old.unlink(missing_ok=True)
    os.replace(fresh, path)
    from trailseal.durable import fsync_dir

    fsync_dir(path.parent)
    # the rebuilt history keeps its records in the database: the old one's files go
    shutil.rmtree(files_dir(path), ignore_errors=True)
    return files, events, stored


def rebuild_main(args: argparse.Namespace) -> int:
    from trailseal import config as config_mod
    from trailseal.daemon import _lock_data_dir
    from trailseal.delivery.destination import open_destination

    try:
        config = config_mod.load(args.config)
        data_dir = config.daemon.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_data_dir(data_dir)
        try:
            host_id = config.daemon.host_id
            if args.destination:
                dests = [
                    open_destination(u, host_id=host_id, s3_endpoint_url=args.s3_endpoint_url)
                    for u in args.destination
                ]
            else:
                dests = [
                    open_destination(t.destination, host_id=host_id, trail=t)
                    for t in config.trails.values()
                ]
            show = sys.stderr.isatty() and not args.no_progress
            files, events, stored = rebuild(data_dir, dests, progress=show)
        finally:
            os.close(lock)
    except TrailsealError as exc:
        print(f"trailseal history rebuild: {exc}", file=sys.stderr)
        return 2
    print(f"event history rebuilt: {stored} events from {files} log files ({events} read)")
    return 0
