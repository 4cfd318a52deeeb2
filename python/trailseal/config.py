"""Configuration: TOML (FORMATS.md §9) → frozen dataclasses.

Every error is a ConfigError naming the file and the key. With no file at all the daemon runs
on the defaults below and one trail named ``default``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path
    account_id: str = "000000000000"
    region: str = "local-1"
    host_id: str = ""


@dataclass(frozen=True)
class IngestConfig:
    unix_socket: Path | None
    """None disables the unix listener."""
    unix_socket_mode: int = 0o660
    unix_socket_group: str = ""
    tcp_listen: tuple[str, int] | None = ("127.0.0.1", 7707)
    """None disables the TCP listener."""
    max_event_bytes: int = 262144
    spool_max_bytes: int = 10737418240
    add_receipt: bool = True
    dedup_window: int = 1_000_000
    tokens: dict[str, str] = field(default_factory=dict)
    """token name → token value; empty means no authentication on TCP."""


@dataclass(frozen=True)
class ApiConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 7708)


@dataclass(frozen=True)
class TrailConfig:
    name: str
    destination: str
    """``file:///abs/dir`` or ``s3://bucket[/prefix]``."""
    s3_endpoint_url: str = ""
    compression: str = "zstd"
    seal_after_bytes: int = 67108864
    seal_after_secs: float = 300.0
    digest_interval_secs: float = 3600.0
    multi_region: bool = True
    organization_id: str = ""


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    ingest: IngestConfig
    api: ApiConfig
    trails: dict[str, TrailConfig]
    source: Path | None = None
    """The file this was read from; None for the embedded defaults."""
