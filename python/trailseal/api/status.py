"""``trailseal status``: a running daemon's ``/healthz``, in a readable form.

The API address comes from ``--api HOST:PORT``, else from ``--config FILE``'s ``[api] listen``
(else the defaults). Exit codes: 0 ok, 1 degraded, 2 unreachable (or the API is disabled).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from trailseal import config as config_mod
from trailseal.errors import TrailsealError

TIMEOUT_SECS = 5.0


def _address(args: argparse.Namespace) -> tuple[str, int] | str:
    """(host, port), or the message explaining why there is none."""
    if args.api:
        try:
            return config_mod.parse_listen(args.api)
        except ValueError as exc:
            return f"--api {args.api!r}: {exc}"
    try:
        config = config_mod.load(args.config)
    except TrailsealError as exc:
        return f"config error: {exc}"
    if config.api.listen is None:
        where = args.config or "the defaults"
        return f'the API is disabled ([api] listen = "" in {where}); enable it to use status'
    return config.api.listen


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(doc: dict[str, Any]) -> str:
    """The healthz document as lines of text."""
    lines = [
        f"status: {doc.get('status', '?')}",
        f"uptime: {float(doc.get('uptime_secs', 0)):.0f} s",
    ]
    for name, trail in sorted(doc.get("trails", {}).items()):
        lines.append(
            f"trail {name}: {trail.get('status')}, backlog {trail.get('backlog_files', 0)} "
            f"files ({trail.get('backlog_bytes', 0)} bytes), last delivery "
            f"{_when(trail.get('last_delivery'))}"
        )
        if trail.get("last_error"):
            lines.append(
                f"  last error ({_when(trail.get('last_error_at'))}): {trail['last_error']}"
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    address = _address(args)
    if isinstance(address, str):
        print(f"trailseal status: {address}", file=sys.stderr)
        return 2
    host, port = address
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECS) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:  # 503: degraded, with the same document
        body = exc.read()
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"trailseal status: the daemon's API at {url} is unreachable ({reason}); is "
            "`trailseal serve` running with this [api] listen?",
            file=sys.stderr,
        )
        return 2
    try:
        doc = json.loads(body)
    except ValueError:
        print(f"trailseal status: {url} did not answer JSON: {body[:200]!r}", file=sys.stderr)
        return 2
    print(render(doc))
    return 0 if doc.get("status") == "ok" else 1
