#!/usr/bin/env bash
# Set up the virtualenv (release build of the Rust core) and run every check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate

echo "== cargo fmt / clippy / test (trailseal-core)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test -q -p trailseal-core

echo "== ruff / mypy"
ruff check python tests benches
ruff format --check python tests benches
mypy
python -m mypy.stubtest trailseal._core --allowlist stubtest-allowlist.txt

echo "== pytest"
pytest -q "$@"
