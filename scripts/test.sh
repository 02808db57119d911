#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), then runs every test of
# the workspace. The tests start their own Tansu broker, ClickHouse server and Qdrant server
# (twin-testkit; the Qdrant binary is $QDRANT_BIN, or ../shared/bin/qdrant beside the
# repository); nothing else need run.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${LLM_TWIN_CACHE:-$HOME/.cache/twin}"
bash scripts/setup.sh

export TANSU_BIN="$CACHE/tansu/bin/tansu"
export PYTHONPATH="$CACHE/python${PYTHONPATH:+:$PYTHONPATH}"
# Build outputs live in the cache too, so that a fresh clone reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
# Keep the build cache bounded: builds of single packages (`cargo test -p ...`) leave variants
# of large crates behind (qdrant-edge's is 1.4 GB). Past 40 GB the debug folder is built again
# from nothing (about 8 minutes).
if [ -d "$CARGO_TARGET_DIR/debug" ] &&
  [ "$(du -s --block-size=1G "$CARGO_TARGET_DIR/debug" | cut -f1)" -gt 40 ]; then
  echo "[test] $CARGO_TARGET_DIR/debug is over 40 GB: building from nothing" >&2
  rm -rf "$CARGO_TARGET_DIR/debug"
fi

# docker/: the compose file against the Compose Specification, the Dockerfile linted.
"$CACHE/lint-venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yml
"$CACHE/lint-venv/bin/hadolint" docker/Dockerfile
echo "docker/: compose file valid, Dockerfile lint-free"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# No test code ships: the twin binary does not link the test harness, and the crawlers do not
# pull in an HTTP server.
if cargo tree --locked -e normal -p twin --prefix none | grep -q '^twin-testkit '; then
  echo "the twin binary links twin-testkit (a dev-dependency only)" >&2
  exit 1
fi
if cargo tree --locked -e normal -p twin-ingest --prefix none | grep -q '^axum '; then
  echo "twin-ingest links axum (the fixture server belongs to twin-testkit)" >&2
  exit 1
fi
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ {
       for (i = 2; i <= NF; i++) {
         if ($i == "passed;") passed += $(i-1)
         if ($i == "failed;") failed += $(i-1)
         if ($i == "ignored;") skipped += $(i-1)
       }
     }
     END { printf "workspace: %d passed, %d failed, %d skipped\n", passed, failed, skipped }' "$results"
exit "$status"
