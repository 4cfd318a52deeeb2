"""config.load: strict TOML, defaults, env-var defaults, relative paths, every kind of error;
and `trailseal serve` refusing a bad config, an unwritable data dir or a socket in use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trailseal import config
from trailseal.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "packaging" / "trailseal.example.toml"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trailseal.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_defaults_without_file(clean_env: Path) -> None:
    cfg = config.load(None)
    data_dir = clean_env / "home" / ".local" / "share" / "trailseal"
    assert cfg.daemon.data_dir == data_dir
    assert cfg.daemon.account_id == "000000000000"
    assert cfg.daemon.region == "local-1"
    assert cfg.daemon.host_id
    assert cfg.daemon.zstd_level == 1
    assert cfg.ingest.unix_socket == data_dir / "ingest.sock"
    assert cfg.ingest.unix_socket_mode == 0o660
    assert cfg.ingest.tcp_listen == ("127.0.0.1", 7707)
    assert cfg.ingest.max_event_bytes == 262144
    assert cfg.api.listen == ("127.0.0.1", 7708)
    assert list(cfg.trails) == ["default"]
    trail = cfg.trails["default"]
    assert trail.destination == f"file://{data_dir}/bucket"
    assert (trail.compression, trail.seal_after_bytes, trail.seal_after_secs) == (
        "zstd",
        67108864,
        300.0,
    )
    assert trail.digest_interval_secs == 3600.0
    assert cfg.source is None


def test_env_var_defaults(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(clean_env / "xdg-data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(clean_env / "xdg-run"))
    cfg = config.load(None)
    assert cfg.daemon.data_dir == clean_env / "xdg-data" / "trailseal"
    assert cfg.ingest.unix_socket == clean_env / "xdg-run" / "trailseal" / "ingest.sock"
    # systemd's variables win over XDG ones.
    monkeypatch.setenv("STATE_DIRECTORY", str(clean_env / "state"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(clean_env / "run"))
    cfg = config.load(None)
    assert cfg.daemon.data_dir == clean_env / "state"
    assert cfg.ingest.unix_socket == clean_env / "run" / "ingest.sock"
    assert cfg.trails["default"].destination == f"file://{clean_env}/state/bucket"


def test_socket_defaults_to_data_dir_from_file(clean_env: Path) -> None:
    cfg = config.load(write(clean_env, '[daemon]\ndata_dir = "data"\n'))
    assert cfg.daemon.data_dir == clean_env / "data"
    assert cfg.ingest.unix_socket == clean_env / "data" / "ingest.sock"


def test_relative_paths_resolve_against_config_dir(clean_env: Path) -> None:
    sub = clean_env / "etc"
    sub.mkdir()
    path = sub / "t.toml"
    path.write_text('[daemon]\ndata_dir = "d"\n[ingest]\nunix_socket = "../s.sock"\n')
    cfg = config.load(path)
    assert cfg.daemon.data_dir == sub / "d"
    assert cfg.ingest.unix_socket == sub / ".." / "s.sock"
    assert cfg.source == path


def test_full_file(clean_env: Path) -> None:
    cfg = config.load(
        write(
            clean_env,
            """
[daemon]
data_dir = "/srv/ts"
account_id = "123456789012"
region = "eu-west-3"
host_id = "h1"
shutdown_timeout_secs = 5
[ingest]
unix_socket = ""
unix_socket_mode = "0600"
tcp_listen = "127.0.0.1:0"
max_event_bytes = 1000
[ingest.tokens]
agent-a = "0123456789abcdef0123"
[api]
listen = ""
[trails.audit]
destination = "file:///srv/bucket"
seal_after_secs = 0.5
digest_interval_secs = 1
[trails.second]
""",
        )
    )
    assert cfg.daemon.account_id == "123456789012"
    assert cfg.daemon.shutdown_timeout_secs == 5.0
    assert cfg.ingest.unix_socket is None
    assert cfg.ingest.unix_socket_mode == 0o600
    assert cfg.ingest.tcp_listen == ("127.0.0.1", 0)
    assert cfg.ingest.tokens == {"agent-a": "0123456789abcdef0123"}
    assert cfg.api.listen is None
    assert list(cfg.trails) == ["audit", "second"]
    assert cfg.trails["audit"].seal_after_secs == 0.5
    assert cfg.trails["second"].destination == "file:///srv/ts/bucket"


def test_example_config_parses(clean_env: Path) -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.daemon.data_dir == Path("/var/lib/trailseal")
    assert cfg.ingest.unix_socket == Path("/run/trailseal/ingest.sock")
    assert list(cfg.trails) == ["default"]
    # Every key of every dataclass is documented in the example.
    text = EXAMPLE.read_text()
    from dataclasses import fields

    for cls in (config.DaemonConfig, config.IngestConfig, config.ApiConfig, config.TrailConfig):
        for f in fields(cls):
            if f.name in ("name",):
                continue
            assert f"{f.name}" in text, f"{cls.__name__}.{f.name} is not in the example config"


def test_describe_mentions_everything(clean_env: Path) -> None:
    text = config.describe(config.load(None))
    assert "[trails.default]" in text
    assert 'unix_socket_mode = "0660"' in text


def test_unknown_key_with_suggestion(clean_env: Path) -> None:
    message = error_of(clean_env, '[ingest]\ntcp_lsiten = "127.0.0.1:1"\n')
    assert message.endswith("[ingest] tcp_lsiten: unknown key (did you mean tcp_listen?)")


def test_unknown_key_in_trail(clean_env: Path) -> None:
    message = error_of(clean_env, '[trails.t1x]\ncompresion = "zstd"\n')
    assert "[trails.t1x] compresion: unknown key (did you mean compression?)" in message


def test_unknown_section(clean_env: Path) -> None:
    message = error_of(clean_env, "[deamon]\n")
    assert "[deamon]: unknown section (did you mean daemon?)" in message


def test_not_toml(clean_env: Path) -> None:
    assert "not valid TOML" in error_of(clean_env, "[daemon\n")


def test_missing_file(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(clean_env / "absent.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[daemon]\naccount_id = "12345"\n', "[daemon] account_id: '12345' is not 12 digits"),
        ("[daemon]\naccount_id = 123456789012\n", "[daemon] account_id: expected a string"),
        ("[daemon]\ndata_dir = 5\n", "[daemon] data_dir: expected a path string, got integer 5"),
        ('[ingest]\nunix_socket_mode = "rw"\n', "[ingest] unix_socket_mode: 'rw' is not an octal"),
        ("[ingest]\nunix_socket_mode = 660\n", "[ingest] unix_socket_mode: expected a string"),
        ('[ingest]\ntcp_listen = "7707"\n', "[ingest] tcp_listen: '7707': expected \"HOST:PORT\""),
        ('[ingest]\ntcp_listen = "h:99999"\n', "[ingest] tcp_listen: 'h:99999': port 99999"),
        ("[ingest]\nmax_event_bytes = -1\n", "[ingest] max_event_bytes: -1 is too small"),
        ("[ingest]\nspool_max_bytes = -5\n", "[ingest] spool_max_bytes: -5 is too small"),
        ('[ingest]\nmax_event_bytes = "1k"\n', "[ingest] max_event_bytes: expected an integer"),
        ("[ingest]\nadd_receipt = 1\n", "[ingest] add_receipt: expected true or false"),
        ('[ingest.tokens]\na = "short"\n', "[ingest.tokens] a: expected a token string"),
        ('[api]\nlisten = "nope"\n', "[api] listen: 'nope'"),
        ("[trails.t1]\nseal_after_secs = 0\n", "[trails.t1] seal_after_secs: 0 is out of range"),
        ("[trails.t1]\nseal_after_secs = -1\n", "[trails.t1] seal_after_secs: -1 is out of range"),
        (
            "[trails.t1]\ndigest_interval_secs = 0.5\n",
            "[trails.t1] digest_interval_secs: 0.5 is out of range",
        ),
        ("[trails.t1]\nseal_after_bytes = 0\n", "[trails.t1] seal_after_bytes: 0 is too small"),
        ('[trails.t1]\ncompression = "lz4"\n', "[trails.t1] compression: 'lz4' is not one of"),
        ("[trails.t1]\ngzip_level = 10\n", "[trails.t1] gzip_level: 10 is not a deflate level"),
        ("[daemon]\nzstd_level = 20\n", "[daemon] zstd_level: 20 is not a zstd level 1 to 19"),
        ("[daemon]\nzstd_level = 0\n", "[daemon] zstd_level: 0 is too small"),
        (
            '[trails.t1]\ndestination = "s3://b/p"\n',
            "[trails.t1] destination: 's3://b/p': 'b' is not an S3 bucket name",
        ),
        (
            '[trails.t1]\ndestination = "file://rel/dir"\n',
            "[trails.t1] destination: 'file://rel/dir' is not file:///absolute/dir",
        ),
        ('[trails.t1]\ndestination = "/abs"\n', "[trails.t1] destination: '/abs' is not file:"),
        ('[trails.t1]\nnotify_url = "ftp://x"\n', "[trails.t1] notify_url: 'ftp://x' is not an"),
        ('[trails.t1]\nnotify_url = "http://"\n', "[trails.t1] notify_url: 'http://' has no host"),
        ('[trails."a/b"]\n', "invalid trail name 'a/b'"),
        ('trails = "x"\n', "trails: expected a [trails] table"),
        ("[daemon]\nshutdown_timeout_secs = 0\n", "[daemon] shutdown_timeout_secs: 0 is out of"),
        (
            '[history]\nindexer_priority = "high"\n',
            "[history] indexer_priority: 'high' is not one of 'idle', 'low'",
        ),
    ],
)
def test_bad_values(clean_env: Path, text: str, expected: str) -> None:
    assert expected in error_of(clean_env, text)


def test_socket_path_too_long(clean_env: Path) -> None:
    long = "/tmp/" + "x" * 120 + "/ingest.sock"
    message = error_of(clean_env, f'[ingest]\nunix_socket = "{long}"\n')
    assert "[ingest] unix_socket:" in message
    assert "107 bytes" in message


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_serve_config_error_is_one_line_exit_2(clean_env: Path) -> None:
    path = write(clean_env, '[ingest]\ntcp_lsiten = "127.0.0.1:1"\n')
    result = serve("--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trailseal: config error: {path}: [ingest] tcp_lsiten: unknown key "
        "(did you mean tcp_listen?)"
    ]


def test_check_config_prints_effective_config(clean_env: Path) -> None:
    path = write(clean_env, '[daemon]\ndata_dir = "d"\naccount_id = "123456789012"\n')
    result = serve("--config", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert 'account_id = "123456789012"' in result.stdout
    assert f'data_dir = "{clean_env / "d"}"' in result.stdout
    assert not (clean_env / "d").exists()
    bad = write(clean_env, '[daemon]\naccount_id = "1"\n')
    assert serve("--config", str(bad), "--check-config").returncode == 2


def test_serve_unwritable_data_dir_exit_2(clean_env: Path) -> None:
    blocker = clean_env / "file-not-dir"
    blocker.write_text("")
    path = write(
        clean_env,
        f'[daemon]\ndata_dir = "{blocker / "data"}"\n[ingest]\nunix_socket = ""\ntcp_listen = ""\n',
    )
    result = serve("--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trailseal: data dir {blocker / 'data'} is not usable")
    assert "[daemon] data_dir" in lines[0]
