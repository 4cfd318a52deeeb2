"""The ``trailseal`` console script: argument parsing only; each command lives in its module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trailseal import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trailseal",
        description="Tamper-evident audit trails: receive events, seal them into chained, "
        "signed log files, and prove later that nothing was changed, removed or inserted.",
    )
    parser.add_argument("--version", action="version", version=f"trailseal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon. With no --config it runs on the embedded defaults: "
        "a local directory destination under the data directory, printed at start.",
    )
    serve.add_argument("--config", type=Path, help="TOML config file (FORMATS.md §9 keys)")
    serve.add_argument(
        "--check-config",
        action="store_true",
        help="only load and check the config, print the effective settings, and exit",
    )

    send = sub.add_parser(
        "send",
        help="ship NDJSON events to a running daemon",
        description="Ship NDJSON events (one JSON object a line) from FILES or standard input. "
        "Missing eventIDs are assigned first so that resends after a reconnect are idempotent. "
        "Prints each rejected line as 'line K: CODE message' and exits 1 if any was rejected.",
    )
    target = send.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, help="find the daemon from this config file")
    target.add_argument("--socket", type=Path, help="the daemon's unix socket")
    target.add_argument("--tcp", metavar="HOST:PORT", help="the daemon's TCP listener")
    send.add_argument("--token", help="ingest token for a TCP listener that requires one")
    send.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    send.add_argument(
        "files", nargs="*", type=Path, metavar="FILES", help="NDJSON files (default: stdin)"
    )

    validate = sub.add_parser(
        "validate",
        help="prove a destination's log files and digests intact",
        description="Walk every digest chain in the destination newest to oldest and verify "
        "signatures, log file hashes, the event chains and the digests' own chaining.",
    )
    validate.add_argument("--destination", required=True, help="file:///dir or s3://bucket/prefix")
    validate.add_argument(
        "--start-time", help="only digests ending at or after this time (RFC 3339)"
    )
    validate.add_argument(
        "--end-time", help="only digests ending at or before this time (RFC 3339)"
    )
    validate.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="trusted public key (PEM); may be given more than once",
    )
    validate.add_argument(
        "--keys-from-destination",
        action="store_true",
        help="also trust the public keys stored in the destination (a weaker check)",
    )
    validate.add_argument(
        "--s3-endpoint-url",
        default="",
        metavar="URL",
        help="S3-compatible server for an s3:// destination (default: AWS_ENDPOINT_URL_S3, else "
        "AWS); credentials come from the usual AWS chain",
    )
    validate.add_argument("-v", "--verbose", action="store_true", help="list every file checked")
    validate.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    status = sub.add_parser(
        "status",
        help="show a running daemon's health",
        description="Print the daemon's /healthz (delivery backlog, last delivery and error per "
        "trail). Exits 0 when ok, 1 when degraded, 2 when the daemon cannot be reached.",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="find the API address from this config file")
    where.add_argument("--api", metavar="HOST:PORT", help="the daemon's [api] listen address")

    api = sub.add_parser("api", help="the CloudTrail API: credentials for the AWS CLI")
    api_sub = api.add_subparsers(dest="api_command", required=True, metavar="SUBCOMMAND")
    credentials = api_sub.add_parser(
        "credentials",
        help="print export lines pointing the stock AWS CLI at the daemon",
        description="Print AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_CLOUDTRAIL "
        "and AWS_DEFAULT_REGION as shell export lines (eval them), from the config's first admin "
        "key or the daemon's generated one.",
    )
    credentials.add_argument("--config", type=Path, help="the daemon's config file")
    credentials.add_argument("--endpoint-url", help="the API's URL (default: [api] listen)")

    from trailseal.api import trail_commands

    trail_commands.add_parser(sub)

    from trailseal.history import commands as history_commands

    history_commands.add_parsers(sub)

    keys = sub.add_parser("keys", help="manage the digest signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    export = keys_sub.add_parser("export", help="print the public signing keys as PEM")
    export.add_argument("--config", type=Path, help="the daemon's config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(_parser().parse_args(argv))
    except BrokenPipeError:  # e.g. `trailseal lookup | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from trailseal import daemon

        return daemon.main(config_path=args.config, check_only=args.check_config)
    if args.command == "send":
        from trailseal import client

        return client.main(args)
    if args.command == "validate":
        from trailseal import validate

        return validate.main(args)
    if args.command == "status":
        from trailseal.api import status

        return status.main(args)
    if args.command == "api":
        from trailseal.api import connect

        return connect.credentials_main(args)
    if args.command == "trails":
        from trailseal.api import trail_commands

        return trail_commands.main(args)
    if args.command == "lookup":
        from trailseal.history import commands as history_commands

        return history_commands.lookup_main(args)
    if args.command == "history":
        from trailseal.history import commands as history_commands

        return history_commands.rebuild_main(args)
    if args.command == "keys":
        from trailseal.delivery import signer

        return signer.main(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
