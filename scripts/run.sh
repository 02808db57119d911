#!/usr/bin/env bash
# The main job on the embedded defaults (or on what twin.toml / TWIN_* say): installs what
# building needs, then runs `twin run`. Extra arguments go to `twin`, e.g. `--data-dir DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_TEST_TOOLS=1 bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${LLM_TWIN_CACHE:-$HOME/.cache/twin}/target}"
exec cargo run --release --locked --quiet -- "$@" run
