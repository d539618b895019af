#!/usr/bin/env bash
# One machine, one process, every local device (all GPUs, or the CPU).
#
#   launch/local.sh [--cpu-devices N] [--dry-run] [COMMAND] [ARGS...]
#
# COMMAND is any star-jax subcommand (default: pipeline); ARGS are passed on unchanged, e.g.
#   launch/local.sh pipeline --config configs/small.yaml --out runs/small
# The mesh spans every local device (a config's fsdp: -1 fills it). --cpu-devices N forces the CPU
# platform split into N simulated devices, to try a sharded mesh without accelerators, e.g.
#   launch/local.sh --cpu-devices 8 train-llm --config configs/tiny.yaml --set mesh.data=2 ...
# --dry-run prints the environment and command instead of running it.
# STAR_JAX overrides the star-jax executable (default: the repository's .venv, else PATH).
# star-jax replaces this script (exec), so a SIGTERM reaches it directly (docs/pipeline.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=0
cpu_devices=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --cpu-devices) cpu_devices="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
command="pipeline"
if [[ $# -gt 0 && "$1" != -* ]]; then
  command="$1"
  shift
fi

if [[ -n "$cpu_devices" ]]; then
  if ! [[ "$cpu_devices" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: error: --cpu-devices: expected a positive integer, got '$cpu_devices'" >&2
    exit 2
  fi
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices"
fi
if [[ -n "${STAR_JAX:-}" ]]; then
  star_jax=("$STAR_JAX")
elif [[ -x "$repo/.venv/bin/star-jax" ]]; then
  star_jax=("$repo/.venv/bin/star-jax")
else
  star_jax=(star-jax)
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ $dry_run -eq 1 ]]; then
  [[ -n "$cpu_devices" ]] && echo "JAX_PLATFORMS=$JAX_PLATFORMS XLA_FLAGS=$XLA_FLAGS"
  printf '%q ' "${star_jax[@]}" "$command" "$@"
  echo
  exit 0
fi
exec "${star_jax[@]}" "$command" "$@"
