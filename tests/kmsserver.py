"""moto's standalone server (``moto_server`` from ``moto[server]``) for the tests that need KMS.

SeaweedFS (tests/s3server.py) is the S3 server of the suite; it has no KMS, so SSE-KMS is tested
against moto, whose S3 and KMS share one process: an object put with ``aws:kms`` and a key id
there reports that key id in HeadObject. moto accepts any credentials (no SigV4 check), so this
server is only ever used where KMS is the point.

``MotoServer.start(work_dir)`` runs ``moto_server`` on a free 127.0.0.1 port (its log in
``work_dir/moto.log``) and waits, with a deadline, until an S3 ListBuckets round-trips;
``stop()`` kills it and waits. ``client(service)`` is a boto3 client for it (path-style,
``us-east-1``), ``create_kms_key()`` makes a symmetric key and returns its id, ``new_bucket()``
a fresh bucket, ``env()`` the variables pointing an AWS SDK chain at it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3server import _free_ports, boto_client

ACCESS_KEY = "MOTOTESTKEY000000001"
SECRET_KEY = "moto-test-secret"
REGION = "us-east-1"
START_DEADLINE_SECS = 60.0
_bucket_numbers = itertools.count()


def moto_server_binary() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    if not beside.exists():
        raise RuntimeError("no `moto_server` beside this Python: install the dev extra (moto)")
    return str(beside)


@dataclass
class MotoServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, work_dir: Path) -> MotoServer:
        work_dir.mkdir(parents=True, exist_ok=True)
        (port,) = _free_ports(1)
        log_path = work_dir / "moto.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=work_dir,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "false"},
            start_new_session=True,
        )
        server = cls(proc, port, log_path, log_file)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_SECS
        client = self.client("s3", max_attempts=1)
        last: Exception | None = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"moto_server exited with {code}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as e:  # not listening yet
                last = e
            time.sleep(0.1)
        raise RuntimeError(
            f"moto_server not ready after {START_DEADLINE_SECS}s (last error: {last}):\n"
            f"{self.log_tail()}"
        )

    def client(self, service: str, max_attempts: int = 3) -> Any:
        return boto_client(service, self.endpoint, ACCESS_KEY, SECRET_KEY, max_attempts)

    def create_kms_key(self) -> str:
        key = self.client("kms").create_key(Description="trailseal SSE-KMS test")
        key_id: str = key["KeyMetadata"]["KeyId"]
        return key_id

    def new_bucket(self) -> str:
        name = f"k{next(_bucket_numbers)}-{uuid.uuid4().hex[:12]}"
        self.client("s3").create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()
