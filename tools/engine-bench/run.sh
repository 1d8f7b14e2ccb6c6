#!/usr/bin/env bash
# The engine beside PyTorch in one run: each part in its own process (peak RSS is the part's),
# candle then PyTorch, then the comparison table. Keep the machine otherwise idle.
# Usage: tools/engine-bench/run.sh [REPEATS]   (needs the venv of tools/sampler-fixtures)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPEATS="${1:-2}"
PY="${PYTHON:-$HOME/.cache/horde/sampler-fixtures-venv/bin/python}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/horde-target}"
OUT="${TMPDIR:-/tmp}/engine-bench"
mkdir -p "$OUT"
cargo bench -p horde-diffusion --bench engine --no-run >/dev/null 2>&1
BENCH=$(cargo bench -p horde-diffusion --bench engine --no-run 2>&1 | sed -n 's/.*Executable .* (\(.*\))/\1/p')
: >"$OUT/candle.jsonl"
for part in unet vae vae_encode; do
    "$BENCH" --part "$part" --repeats "$REPEATS" | tee -a "$OUT/candle.jsonl"
done
"$PY" tools/engine-bench/pytorch_bench.py --repeats "$REPEATS" | tee "$OUT/pytorch.jsonl"
"$PY" tools/engine-bench/compare.py "$OUT/candle.jsonl" "$OUT/pytorch.jsonl"
