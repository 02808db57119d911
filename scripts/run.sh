#!/usr/bin/env bash
# The main job: `twin demo`, the whole loop on the sample author that ships with the project,
# on the embedded defaults (data under ./.twin/demo). Installs what building needs, builds `twin`
# in release mode (once), then runs it. Arguments replace `demo` and go to `twin` as they are:
# `scripts/run.sh demo --fresh`, `scripts/run.sh run` (the configured pipeline), and so on.
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_TEST_TOOLS=1 bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${LLM_TWIN_CACHE:-$HOME/.cache/twin}/target}"
binary="$CARGO_TARGET_DIR/release/twin"
if [ ! -x "$binary" ]; then
  echo "[run] building twin in release mode for the first time: about half an hour on 2 cores" \
    "(librdkafka, the ONNX Runtime and libtorch bindings, the workspace); later runs start in" \
    "seconds" >&2
else
  echo "[run] checking the build (seconds when nothing changed)" >&2
fi
cargo build --release --locked --quiet --bin twin
if [ "$#" -eq 0 ]; then
  set -- demo
fi
exec "$binary" "$@"
