#!/usr/bin/env bash
# Create .venv and install trailseal into it (editable, release build of the Rust core).
# Usage: scripts/setup.sh [dev]   (dev also installs the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
if [[ "${1:-}" == "dev" ]]; then
  .venv/bin/pip install -q -e '.[dev]'
else
  .venv/bin/pip install -q -e .
fi
