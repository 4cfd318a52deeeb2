"""The client side of the CloudTrail API: a boto3 ``cloudtrail`` client pointed at the daemon
(``trailseal lookup``, ``trailseal trails``), and ``trailseal api credentials`` for the stock AWS
CLI.

Where the daemon is: ``endpoint_url``, else ``$AWS_ENDPOINT_URL_CLOUDTRAIL``, else the config's
``[api] listen``. Credentials: ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` when both are set,
else the config's first admin key, else the daemon's generated key
(``<data_dir>/api/access-key.json``). Region: ``region``, else ``$AWS_REGION`` /
``$AWS_DEFAULT_REGION``, else the config's ``[daemon] region`` (any region verifies).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trailseal import config as config_mod
from trailseal.api import access_keys
from trailseal.errors import TrailsealError


class ConnectError(TrailsealError):
    """The daemon's API address or credentials cannot be found."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    access_key_id: str
    secret_access_key: str
    region: str


def resolve(
    config_path: Path | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    environment_credentials: bool = True,
) -> Endpoint:
    """Where the daemon's API is and which credentials to sign with (the environment's only when
    ``environment_credentials``). Raises TrailsealError."""
    config = config_mod.load(config_path)
    where = str(config_path) if config_path else "the default config"
    url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_CLOUDTRAIL", "")
    if not url:
        if config.api.listen is None:
            raise ConnectError(
                f'the API is disabled ([api] listen = "" in {where}); enable it, or pass '
                "--endpoint-url"
            )
        host, port = config.api.listen
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    key_id = os.environ.get("AWS_ACCESS_KEY_ID", "") if environment_credentials else ""
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "") if environment_credentials else ""
    if not (key_id and secret):
        keys = access_keys.load(config.api, config.daemon.data_dir, create=False)
        admin = keys.first_admin()
        if admin is None:  # only read keys configured: take the first
            admin = next(iter(keys.keys.values()))
        key_id, secret = admin.access_key_id, admin.secret_access_key
    chosen_region = (
        region
        or os.environ.get("AWS_REGION", "")
        or os.environ.get("AWS_DEFAULT_REGION", "")
        or config.daemon.region
    )
    return Endpoint(url.rstrip("/"), key_id, secret, chosen_region)


def cloudtrail_client(
    config_path: Path | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> Any:
    """A boto3 ``cloudtrail`` client for the daemon (see the module docstring for where the
    endpoint and the credentials come from). Raises TrailsealError."""
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = resolve(config_path, endpoint_url=endpoint_url, region=region)
    return boto3.client(
        "cloudtrail",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key_id,
        aws_secret_access_key=endpoint.secret_access_key,
        config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"}),
    )


def credentials_main(args: argparse.Namespace) -> int:
    """``trailseal api credentials``: print ``export`` lines for the stock AWS CLI."""
    try:
        endpoint = resolve(
            args.config, endpoint_url=args.endpoint_url, environment_credentials=False
        )
    except TrailsealError as exc:
        print(f"trailseal api credentials: {exc}", file=sys.stderr)
        return 2
    for name, value in (
        ("AWS_ACCESS_KEY_ID", endpoint.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", endpoint.secret_access_key),
        ("AWS_ENDPOINT_URL_CLOUDTRAIL", endpoint.url),
        ("AWS_DEFAULT_REGION", endpoint.region),
    ):
        print(f"export {name}={shlex.quote(value)}")
    return 0
