"""Configuration: TOML (FORMATS.md §9) → frozen dataclasses.

Every error is a ConfigError naming the file and the key. With no file at all the daemon runs
on the defaults below and one trail named ``default``.

Loading is strict (an unknown section or key is an error, with a "did you mean" suggestion),
relative paths resolve against the config file's directory, and values are checked here so the
daemon never starts on a setting it would misread. ``packaging/trailseal.example.toml`` documents
every key; a test parses it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trailseal import _core
from trailseal.errors import ConfigError


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path
    account_id: str = "000000000000"
    region: str = "local-1"
    host_id: str = ""
    shutdown_timeout_secs: float = 30.0
    """Upper bound on a graceful shutdown (final acks, sealing, delivery, final digests)."""
    zstd_level: int = 1
    """zstd level (1-19) of zstd log files; 1 was faster and smaller than 3 (BENCHMARKS.md)."""


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
    access_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    """access key id → (secret, role); role is "admin" or "read"."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body the API listener takes (413 beyond): a CloudTrail call or a
    ``POST /v1/events`` batch."""
    trail_buckets: str = ""
    """Where the bucket of a trail made with CreateTrail lives: ``file:///dir`` (bucket ``B`` is
    the directory ``/dir/B``; default ``file://<data_dir>/buckets``) or ``s3``."""
    trail_s3_endpoint_url: str = ""
    """With ``trail_buckets = "s3"``: the S3-compatible server ("" is the AWS SDK default)."""


@dataclass(frozen=True)
class HistoryConfig:
    """``[history]``: the event history that LookupEvents and ``trailseal lookup`` read."""

    enabled: bool = True
    days: int = 90
    """Events whose eventTime is older than this many days are deleted (continuously); 0 keeps
    them forever."""
    indexer_priority: str = "idle"
    """The indexer thread's CPU priority: "idle" (SCHED_IDLE: it takes only CPU nothing else
    wants, which keeps it within a fraction of a second of a load saturating 2 cores; on a
    machine busier still it lags and catches up afterwards) or "low" (nice 10: more CPU for it,
    at a cost to ingest's throughput)."""


@dataclass(frozen=True)
class TrailConfig:
    name: str
    destination: str
    """``file:///abs/dir`` or ``s3://bucket[/prefix]``."""
    s3_endpoint_url: str = ""
    """S3-compatible server; "" is the AWS SDK default (which honours AWS_ENDPOINT_URL_S3)."""
    s3_region: str = ""
    """"" is the AWS SDK default (AWS_REGION, the shared config…)."""
    s3_multipart_threshold_bytes: int = 67108864
    """Log files larger than this go up as a multipart upload (per-part SHA-256 checksums)."""
    compression: str = "zstd"
    """"zstd" or "gzip": how the trail's log files are compressed."""
    gzip_level: int = 6
    """Deflate level (1-9) of a gzip trail's log files."""
    seal_after_bytes: int = 67108864
    seal_after_secs: float = 300.0
    digest_interval_secs: float = 3600.0
    multi_region: bool = True
    """False: the trail takes only events whose awsRegion is the daemon's home ``region``."""
    organization_id: str = ""
    """``o-…``: keys carry it after ``AWSLogs/``; streams and digests stay per account."""
    sse: str = ""
    kms_key_id: str = ""
    object_lock_mode: str = ""
    object_lock_days: int = 0
    retention_days: int = 0
    notify_url: str = ""
    """http(s) URL that gets CloudTrail's SNS-style message after log files are delivered."""
    selectors_json: str = "{}"
    """The trail's event selectors as the JSON object ``_core`` takes:
    ``{"event_selectors": [...]}``, ``{"advanced_event_selectors": [...]}`` or ``"{}"`` (no
    selectors: every management event, read and write). Checked at load by the core."""


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    ingest: IngestConfig
    api: ApiConfig
    trails: dict[str, TrailConfig]
    source: Path | None = None
    """The file this was read from; None for the embedded defaults."""
    history: HistoryConfig = field(default_factory=HistoryConfig)


# ---------------------------------------------------------------------------------------------
# Default locations


def default_data_dir() -> Path:
    """``$STATE_DIRECTORY`` (systemd), else ``$XDG_DATA_HOME/trailseal``, else
    ``~/.local/share/trailseal``."""
    state = os.environ.get("STATE_DIRECTORY", "")
    if state:
        # systemd passes a colon-separated list when several StateDirectory= are set.
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "trailseal"
    return Path.home() / ".local" / "share" / "trailseal"


def default_unix_socket(data_dir: Path) -> Path:
    """``$RUNTIME_DIRECTORY/ingest.sock``, else ``$XDG_RUNTIME_DIR/trailseal/ingest.sock``, else
    ``<data_dir>/ingest.sock``."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "")
    if runtime:
        return Path(runtime.split(":")[0]) / "ingest.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "trailseal" / "ingest.sock"
    return data_dir / "ingest.sock"


def default_host_id() -> str:
    """``/etc/machine-id``, else the hostname."""
    try:
        machine_id = Path("/etc/machine-id").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine_id = ""
    return machine_id or socket.gethostname()


# ---------------------------------------------------------------------------------------------
# Loading


class _Section:
    """One TOML table being read: hands out typed values and remembers which keys were used."""

    def __init__(self, where: str, name: str, table: Mapping[str, Any], base: Path | None) -> None:
        self.where = where
        self.name = name
        self.table = table
        self.base = base
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: [{self.name}] {key}: {message}")

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.table.get(key)

    def string(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_show(value)}")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_show(value)}")
        if value < minimum:
            raise self.error(key, f"{value} is too small: the minimum is {minimum}")
        return int(value)

    def seconds(self, key: str, default: float, *, minimum: float, inclusive: bool) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number of seconds, got {_show(value)}")
        if value < minimum or (not inclusive and value == minimum):
            bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
            raise self.error(key, f"{value!r} is out of range: it must be {bound} seconds")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_show(value)}")
        return value

    def path(self, key: str, default: Path | None) -> Path | None:
        """A path; relative ones resolve against the config file's directory; "" is None."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a path string, got {_show(value)}")
        if value == "":
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base is not None:
            path = self.base / path
        return path

    def choice(self, key: str, default: str, choices: dict[str, str | None]) -> str:
        """A string among ``choices``; a choice mapped to a message is refused with it."""
        value = self.string(key, default)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices if choices[c] is None)
            raise self.error(key, f"{value!r} is not one of {allowed}")
        refusal = choices[value]
        if refusal is not None:
            raise self.error(key, f"{value!r}: {refusal}")
        return value

    def listen(self, key: str, default: tuple[str, int] | None) -> tuple[str, int] | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f'expected "HOST:PORT" or "", got {_show(value)}')
        if value == "":
            return None
        try:
            return parse_listen(value)
        except ValueError as exc:
            raise self.error(key, f"{value!r}: {exc}") from None

    def table_of(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_show(value)}")
        return value

    def check_unknown(self, extra_allowed: set[str] | None = None) -> None:
        known = self.used | (extra_allowed or set())
        for key in self.table:
            if key not in known:
                raise self.error(key, "unknown key" + _suggest(key, known))


def parse_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` for IPv6) → (host, port). Raises ValueError."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError('expected "HOST:PORT", e.g. "127.0.0.1:7707" (or "" to disable)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return host, port


def _show(value: object) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    name = kind.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)
    return f"{name} {value!r}" if not isinstance(value, dict) else name


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


_ACCOUNT_RE = re.compile(r"\d{12}")
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TRAIL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ORG_RE = re.compile(r"o-[a-z0-9]{10,32}")
_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9_]{4,128}")

_TOP_LEVEL = {"daemon", "ingest", "api", "trails", "history"}


def load(path: Path | None) -> Config:
    """Read and check the config file (or the embedded defaults when ``path`` is None).

    Raises ConfigError naming the file and the key on any problem."""
    if path is None:
        raw: dict[str, Any] = {}
        where = "<defaults>"
        base: Path | None = None
        source = None
    else:
        source = Path(path).expanduser().absolute()
        where = str(source)
        base = source.parent
        try:
            with source.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the config file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None

    for name, value in raw.items():
        if name not in _TOP_LEVEL:
            raise ConfigError(f"{where}: [{name}]: unknown section" + _suggest(name, _TOP_LEVEL))
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name}: expected a [{name}] table, got {_show(value)}")

    daemon = _load_daemon(_Section(where, "daemon", raw.get("daemon", {}), base))
    ingest = _load_ingest(_Section(where, "ingest", raw.get("ingest", {}), base), daemon.data_dir)
    api = _load_api(_Section(where, "api", raw.get("api", {}), base), where, daemon)

    trails_raw: dict[str, Any] = raw.get("trails", {})
    if not trails_raw:
        trails_raw = {"default": {}}
    trails: dict[str, TrailConfig] = {}
    for name, table in trails_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: trails.{name}: expected a [trails.{name}] table")
        if not _TRAIL_RE.fullmatch(name):
            raise ConfigError(
                f"{where}: [trails.{name}]: invalid trail name {name!r}: use 1-128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        trails[name] = _load_trail(_Section(where, f"trails.{name}", table, base), name, daemon)
    history = _load_history(_Section(where, "history", raw.get("history", {}), base))
    return Config(
        daemon=daemon, ingest=ingest, api=api, trails=trails, source=source, history=history
    )


def _load_history(s: _Section) -> HistoryConfig:
    enabled = s.boolean("enabled", True)
    days = s.integer("history_days", 90, minimum=0)
    priority = s.choice("indexer_priority", "idle", {"idle": None, "low": None})
    s.check_unknown()
    return HistoryConfig(enabled=enabled, days=days, indexer_priority=priority)


def _load_daemon(s: _Section) -> DaemonConfig:
    data_dir = s.path("data_dir", None) or default_data_dir()
    account_id = s.string("account_id", "000000000000")
    if not _ACCOUNT_RE.fullmatch(account_id):
        raise s.error("account_id", f"{account_id!r} is not 12 digits")
    region = s.string("region", "local-1")
    if not _REGION_RE.fullmatch(region):
        raise s.error("region", f"{region!r} is not a region name (lower-case letters, digits, -)")
    host_id = s.string("host_id", "") or default_host_id()
    if "/" in host_id or not host_id.isprintable():
        raise s.error("host_id", f"{host_id!r} must not contain '/' or control characters")
    timeout = s.seconds("shutdown_timeout_secs", 30.0, minimum=0, inclusive=False)
    zstd_level = s.integer("zstd_level", 1, minimum=1)
    if zstd_level > 19:
        raise s.error("zstd_level", f"{zstd_level} is not a zstd level 1 to 19")
    s.check_unknown()
    return DaemonConfig(
        data_dir=data_dir,
        account_id=account_id,
        region=region,
        host_id=host_id,
        shutdown_timeout_secs=timeout,
        zstd_level=zstd_level,
    )


def _load_ingest(s: _Section, data_dir: Path) -> IngestConfig:
    unix_socket = s.path("unix_socket", default_unix_socket(data_dir))
    if unix_socket is not None and len(os.fsencode(unix_socket)) > 107:
        raise s.error(
            "unix_socket", f"{str(unix_socket)!r} is longer than the 107 bytes a socket path allows"
        )
    mode_text = s.string("unix_socket_mode", "0660")
    if not re.fullmatch(r"0?[0-7]{3}", mode_text):
        raise s.error("unix_socket_mode", f'{mode_text!r} is not an octal mode string like "0660"')
    group = s.string("unix_socket_group", "")
    tcp_listen = s.listen("tcp_listen", ("127.0.0.1", 7707))
    max_event_bytes = s.integer("max_event_bytes", 262144, minimum=1)
    spool_max_bytes = s.integer("spool_max_bytes", 10737418240, minimum=0)
    add_receipt = s.boolean("add_receipt", True)
    dedup_window = s.integer("dedup_window", 1_000_000, minimum=0)
    tokens_raw = s.table_of("tokens")
    tokens: dict[str, str] = {}
    for name, token in tokens_raw.items():
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigError(
                f"{s.where}: [ingest.tokens] {name}: expected a token string of at least 16 "
                "characters (e.g. from `openssl rand -hex 24`)"
            )
        tokens[name] = token
    if len(set(tokens.values())) != len(tokens):
        raise ConfigError(
            f"{s.where}: [ingest.tokens]: two names share one token; make each unique"
        )
    s.check_unknown()
    return IngestConfig(
        unix_socket=unix_socket,
        unix_socket_mode=int(mode_text, 8),
        unix_socket_group=group,
        tcp_listen=tcp_listen,
        max_event_bytes=max_event_bytes,
        spool_max_bytes=spool_max_bytes,
        add_receipt=add_receipt,
        dedup_window=dedup_window,
        tokens=tokens,
    )


def _load_api(s: _Section, where: str, daemon: DaemonConfig) -> ApiConfig:
    listen = s.listen("listen", ("127.0.0.1", 7708))
    max_body_bytes = s.integer("max_body_bytes", 16 * 1024 * 1024, minimum=1024)
    access_keys: dict[str, tuple[str, str]] = {}
    for key_id, table in s.table_of("access_keys").items():
        sub = _Section(where, f"api.access_keys.{key_id}", table, None)
        if not _ACCESS_KEY_RE.fullmatch(key_id):
            raise ConfigError(
                f"{where}: [api.access_keys.{key_id}]: {key_id!r} is not an access key id: use "
                "4-128 letters, digits or '_' (like AKIAEXAMPLEKEY000001)"
            )
        if not isinstance(table, dict):
            raise sub.error("", "expected a table with secret and role")
        secret = sub.string("secret", "")
        if not secret:
            raise sub.error("secret", "missing: every access key needs a secret")
        role = sub.choice("role", "read", {"admin": None, "read": None})
        sub.check_unknown()
        access_keys[key_id] = (secret, role)
    trail_buckets = s.string("trail_buckets", f"file://{daemon.data_dir / 'buckets'}")
    if trail_buckets != "s3" and (
        not trail_buckets.startswith("file:///") or trail_buckets.rstrip("/") == "file://"
    ):
        raise s.error("trail_buckets", f'{trail_buckets!r} is not file:///absolute/dir or "s3"')
    endpoint = s.string("trail_s3_endpoint_url", "")
    if endpoint and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
        raise s.error("trail_s3_endpoint_url", f"{endpoint!r} is not an http(s)://host[:port] URL")
    s.check_unknown()
    return ApiConfig(
        listen=listen,
        access_keys=access_keys,
        max_body_bytes=max_body_bytes,
        trail_buckets=trail_buckets,
        trail_s3_endpoint_url=endpoint,
    )


_COMPRESSIONS: dict[str, str | None] = {"zstd": None, "gzip": None}


def _load_trail(s: _Section, name: str, daemon: DaemonConfig) -> TrailConfig:
    default_destination = f"file://{daemon.data_dir / 'bucket'}"
    destination = s.string("destination", default_destination)
    is_s3 = destination.startswith("s3://")
    if is_s3:
        from trailseal.delivery.s3 import parse_s3_url  # boto3 is imported only for s3 trails

        try:
            parse_s3_url(destination, daemon.host_id)
        except ConfigError as exc:
            raise s.error("destination", str(exc).removeprefix("destination ")) from None
    elif not destination.startswith("file:///") or destination.rstrip("/") == "file://":
        raise s.error(
            "destination",
            f"{destination!r} is not file:///absolute/dir or s3://bucket[/prefix]",
        )
    values: dict[str, Any] = {
        "s3_endpoint_url": s.string("s3_endpoint_url", ""),
        "s3_region": s.string("s3_region", ""),
        "s3_multipart_threshold_bytes": s.integer(
            "s3_multipart_threshold_bytes", 67108864, minimum=5 * 1024 * 1024
        ),
        "compression": s.choice("compression", "zstd", _COMPRESSIONS),
        "gzip_level": s.integer("gzip_level", 6, minimum=1),
        "seal_after_bytes": s.integer("seal_after_bytes", 67108864, minimum=1),
        "seal_after_secs": s.seconds("seal_after_secs", 300.0, minimum=0, inclusive=False),
        "digest_interval_secs": s.seconds(
            "digest_interval_secs", 3600.0, minimum=1, inclusive=True
        ),
        "multi_region": s.boolean("multi_region", True),
        "organization_id": s.string("organization_id", ""),
        "sse": s.choice("sse", "", {"": None, "AES256": None, "aws:kms": None}),
        "kms_key_id": s.string("kms_key_id", ""),
        "object_lock_mode": s.choice(
            "object_lock_mode", "", {"": None, "COMPLIANCE": None, "GOVERNANCE": None}
        ),
        "object_lock_days": s.integer("object_lock_days", 0, minimum=0),
        "retention_days": s.integer("retention_days", 0, minimum=0),
    }
    if values["gzip_level"] > 9:
        raise s.error("gzip_level", f"{values['gzip_level']} is not a deflate level 1 to 9")
    org = values["organization_id"]
    if org and not _ORG_RE.fullmatch(org):
        raise s.error("organization_id", f"{org!r} is not an organization id like o-abcdefghij")
    endpoint = values["s3_endpoint_url"]
    if endpoint and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
        raise s.error("s3_endpoint_url", f"{endpoint!r} is not an http(s)://host[:port] URL")
    if not is_s3:
        for s3_only in ("sse", "kms_key_id", "object_lock_mode", "object_lock_days"):
            if values[s3_only]:
                raise s.error(
                    s3_only,
                    f"applies only to s3:// destinations, not {destination!r}: remove the key "
                    "(protect a file:// directory with the file system)",
                )
    if values["kms_key_id"] and values["sse"] != "aws:kms":
        raise s.error("kms_key_id", 'is used only with sse = "aws:kms"; set both or neither')
    if bool(values["object_lock_mode"]) != bool(values["object_lock_days"]):
        missing = "object_lock_days" if values["object_lock_mode"] else "object_lock_mode"
        raise s.error(
            missing,
            "object_lock_mode and object_lock_days go together: set both (e.g. "
            '"COMPLIANCE" and 365) or neither',
        )
    if values["retention_days"] and values["object_lock_mode"]:
        raise s.error(
            "retention_days",
            "cannot be combined with object_lock_mode: Object Lock needs a versioned bucket, "
            "where a lifecycle expiration only adds a delete marker and every locked version "
            "stays (and a locked version cannot be deleted before its retention ends); set "
            "object_lock_days to how long to keep objects and leave retention_days = 0, or drop "
            "Object Lock",
        )
    values["notify_url"] = s.string("notify_url", "")
    if values["notify_url"]:
        from trailseal.delivery.notify import check_url

        problem = check_url(values["notify_url"])
        if problem:
            raise s.error("notify_url", f'{problem}; use e.g. "http://127.0.0.1:8080/trail"')
    values["selectors_json"] = _load_selectors(s)
    s.check_unknown()
    return TrailConfig(name=name, destination=destination, **values)


_SELECTOR_KEYS = ("event_selectors", "advanced_event_selectors")


def _load_selectors(s: _Section) -> str:
    """``event_selectors`` / ``advanced_event_selectors`` (CloudTrail's shapes and member names)
    → the JSON object the core takes, refused here with the core's reason when CloudTrail would
    refuse them. An absent key or an empty array means "not set"."""
    chosen: dict[str, Any] = {}
    for key in _SELECTOR_KEYS:
        value = s._get(key)
        if value is None or value == []:
            continue
        if not isinstance(value, list):
            raise s.error(key, f"expected an array of selector tables, got {_show(value)}")
        chosen[key] = value
    if not chosen:
        return "{}"
    key = next(iter(chosen))
    try:
        text = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
    except TypeError as exc:  # e.g. a TOML date where CloudTrail takes a string
        raise s.error(
            key, f"selectors hold a value that is not a string, bool or array: {exc}"
        ) from None
    try:
        _core.check_selectors(text)
    except ValueError as exc:
        raise s.error(key, f"{exc}; see CloudTrail's PutEventSelectors for the rules") from None
    return text


def describe(config: Config) -> str:
    """The effective config as TOML-like text (``trailseal serve --check-config``)."""

    def fmt(value: object) -> str:
        if value is None:
            return '""'
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, Path):
            return f'"{value}"'
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
            return f'"{value[0]}:{value[1]}"'
        if isinstance(value, str):
            return f'"{value}"'
        return repr(value)

    def section(title: str, obj: Any, skip: Callable[[str], bool]) -> list[str]:
        lines = [f"[{title}]"]
        for f in fields(obj):
            if skip(f.name):
                continue
            value = getattr(obj, f.name)
            if f.name == "unix_socket_mode":
                value = f"0{value:o}"
            lines.append(f"{f.name} = {fmt(value)}")
        return lines

    out = [f"# effective config from {config.source or 'the embedded defaults'}"]
    out += section("daemon", config.daemon, lambda n: False)
    out += section("ingest", config.ingest, lambda n: n == "tokens")
    if config.ingest.tokens:
        out.append(f"# tokens: {', '.join(sorted(config.ingest.tokens))} (values hidden)")
    out += section("api", config.api, lambda n: n == "access_keys")
    if config.api.access_keys:
        out.append(f"# access keys: {', '.join(sorted(config.api.access_keys))}")
    for trail in config.trails.values():
        out += section(f"trails.{trail.name}", trail, lambda n: n == "name")
    out += section("history", config.history, lambda n: False)
    return "\n".join(out)
