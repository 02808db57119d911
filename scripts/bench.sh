#!/usr/bin/env bash
# Benchmarks (not tests): prints figures beside their baselines.
#   scripts/bench.sh log      the event log, embedded and Kafka (Tansu), 100,000 events of 1 KB
#   scripts/bench.sh embed    embedding throughput against the Python baseline [-- --corpus FILE]
#   scripts/bench.sh latency  end-to-end latency, append to searchable, at 5 documents/s [RATE SECONDS]
#   scripts/bench.sh crawl    crawl throughput, 1,000 local article pages (PAGES, CONCURRENCY)
#   scripts/bench.sh datasets offline dataset build time, 76 and 760 documents
#   scripts/bench.sh train    training tokens/s against transformers, full and LoRA [-- --steps N]
#   scripts/bench.sh generate generation tokens/s against transformers, 1/4/16 concurrent [-- --tokens N]
#   scripts/bench.sh serve    /v1/search p50/p99 with 100,000 chunks on Qdrant Edge and server; load
#                             at rising concurrency on /v1/search and /rag [-- --chunks N --seconds S]
#   scripts/bench.sh pipeline the whole feature pipeline over 304 article pages, embedded and on
#                             Tansu + ClickHouse + Qdrant: docs/s, chunks/s, time to searchable (DOCS)
# Extra arguments after the name go to the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_TWIN_CACHE:-$HOME/.cache/twin}"
bash scripts/setup.sh
export TANSU_BIN="$CACHE/tansu/bin/tansu"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
which="${1:-all}"
shift || true
if [ "$which" = log ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-eventlog --bench log_throughput -- "$@"
fi
if [ "$which" = embed ] || [ "$which" = all ]; then
  # The baseline's packages, in a folder of their own (not the project's environment).
  if [ ! -f "$CACHE/bench-python/.ok" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/bench-python" \
      onnxruntime==1.32.0 tokenizers numpy
    touch "$CACHE/bench-python/.ok"
  fi
  PYTHONPATH="$CACHE/bench-python" cargo bench --locked -p twin-embedding --bench embed_throughput -- "$@"
fi
if [ "$which" = latency ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-stream --bench end_to_end_latency -- "$@"
fi
if [ "$which" = crawl ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-ingest --bench crawl_throughput -- "$@"
fi
if [ "$which" = datasets ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-datasets --bench offline_build -- "$@"
fi
if [ "$which" = train ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-training --bench train_throughput -- "$@"
fi
if [ "$which" = generate ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-serving --bench generate_throughput -- "$@"
fi
if [ "$which" = serve ] || [ "$which" = all ]; then
  cargo bench --locked -p twin-serving --bench serve_latency -- "$@"
fi
if [ "$which" = pipeline ] || [ "$which" = all ]; then
  cargo bench --locked -p twin --bench feature_pipeline -- "$@"
fi
