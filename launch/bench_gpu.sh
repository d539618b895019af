#!/usr/bin/env bash
# The GPU benchmark for a lent H100/H200: a 7B-shaped Mistral bi-encoder LoRA step (random bf16
# weights, sequences 1024 and 1800, LoRA r16, each remat policy), star_jax with cuDNN attention
# against transformers + PEFT with SDPA. Uses only the packages installed on the machine, plus
# wheels carried in .whl/ (omegaconf, jraph) when present. Writes JSON and table.md to $OUT
# (default runs/bench_gpu). Pass --tiny to run the same code path at toy shapes on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/bench_gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/star_site .whl/*.whl
  export PYTHONPATH="/tmp/star_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 240 "$py" -m benchmarks.bench_gpu --framework jax --out "$out/jax.json" "$@" || echo "jax run failed: $?"
timeout 110 "$py" -m benchmarks.bench_gpu --framework torch --out "$out/torch.json" "$@" || echo "torch run failed: $?"
"$py" -m benchmarks.bench_gpu --report "$out" "$@"
