#!/usr/bin/env bash
# Multi-host launcher: one star-jax process per host, joined through jax.distributed.
#
#   launch/gpu_pod.sh [--dry-run] [--port PORT] [COMMAND] [ARGS...]
#
# COMMAND is any star-jax subcommand (default: pipeline); ARGS are passed on unchanged, e.g.
#   srun --nodes=4 --ntasks-per-node=1 launch/gpu_pod.sh pipeline --config configs/e5_mistral_7b.yaml --out runs/7b
#
# Who am I, who leads:
#   - under SLURM (SLURM_PROCID set): process id = SLURM_PROCID, process count = SLURM_NTASKS, and the
#     coordinator is the first host of SLURM_JOB_NODELIST (`scontrol show hostnames`) on PORT;
#   - otherwise from the environment: COORDINATOR_ADDRESS (host:port), NUM_PROCESSES, PROCESS_ID;
#     start the script once per host with its own PROCESS_ID.
# These reach star-jax as `--set mesh.coordinator_address=... --set mesh.num_processes=...
# --set mesh.process_id=...` (star_jax/parallel.py calls jax.distributed.initialize with them).
# With 8 GPUs per host use a config whose mesh is fsdp=8 (within a host) and data=-1 (across
# hosts), as configs/e5_mistral_7b.yaml does. The run directory must be on a filesystem every
# host shares.
#
# --dry-run prints the command of every host (process 0 .. N-1) and runs nothing; for `pipeline` it
# also lists the stages each process runs (`star-jax pipeline --plan`).
# STAR_JAX overrides the star-jax executable (default: the repository's .venv, else PATH).
# A SIGTERM to this script is forwarded to star-jax, and the script exits with its status: a
# training stage checkpoints the step every process agrees on and exits with 143 (docs/pipeline.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=0
port="${COORDINATOR_PORT:-12355}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
command="pipeline"
if [[ $# -gt 0 && "$1" != -* ]]; then
  command="$1"
  shift
fi

die() { echo "gpu_pod.sh: error: $*" >&2; exit 2; }

if [[ -n "${SLURM_PROCID:-}" ]]; then
  num_processes="${SLURM_NTASKS:?gpu_pod.sh: SLURM_NTASKS is not set}"
  process_id="$SLURM_PROCID"
  nodelist="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
  [[ -n "$nodelist" ]] || die "SLURM_JOB_NODELIST is not set"
  mapfile -t hosts < <(scontrol show hostnames "$nodelist")
  [[ ${#hosts[@]} -gt 0 ]] || die "scontrol show hostnames $nodelist returned no host"
  coordinator="${hosts[0]}:$port"
else
  [[ -n "${COORDINATOR_ADDRESS:-}" ]] || die "not under SLURM: set COORDINATOR_ADDRESS (host:port), NUM_PROCESSES and PROCESS_ID"
  [[ -n "${NUM_PROCESSES:-}" ]] || die "NUM_PROCESSES is not set"
  coordinator="$COORDINATOR_ADDRESS"
  num_processes="$NUM_PROCESSES"
  process_id="${PROCESS_ID:-}"
  hosts=()
  [[ -n "$process_id" || $dry_run -eq 1 ]] || die "PROCESS_ID is not set"
fi
[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || die "the process count must be a positive integer, got '$num_processes'"

if [[ -n "${STAR_JAX:-}" ]]; then
  star_jax=("$STAR_JAX")
elif [[ -x "$repo/.venv/bin/star-jax" ]]; then
  star_jax=("$repo/.venv/bin/star-jax")
else
  star_jax=(star-jax)
fi

host_command() {  # the command process $1 runs
  printf '%q ' "${star_jax[@]}" "$command" "$@" \
    --set "mesh.coordinator_address=$coordinator" \
    --set "mesh.num_processes=$num_processes" \
    --set "mesh.process_id=$pid"
}

if [[ $dry_run -eq 1 ]]; then
  for ((pid = 0; pid < num_processes; pid++)); do
    host=""
    [[ ${#hosts[@]} -eq $num_processes ]] && host="${hosts[$pid]}"  # one task per node
    echo "# process $pid of $num_processes${host:+ on $host} (coordinator $coordinator)"
    host_command "$@"
    echo
  done
  if [[ "$command" == "pipeline" ]]; then
    # The stages, from the config as the hosts will read it (`star-jax pipeline --plan` runs nothing).
    plan="$("${star_jax[@]}" pipeline "$@" --plan)" || die "star-jax pipeline --plan failed (its error is above)"
    echo "# the stages each process runs, in order (process 0 alone runs the rest while the others wait):"
    for ((pid = 0; pid < num_processes; pid++)); do
      echo "#   process $pid: $(awk -v lead=$((pid == 0)) '$2 == "every" || lead { printf "%s%s", sep, $1; sep = ", " }' <<<"$plan")"
    done
  fi
  exit 0
fi

[[ "$process_id" =~ ^[0-9]+$ && "$process_id" -lt "$num_processes" ]] \
  || die "process id '$process_id' is not in [0, $num_processes)"
pid="$process_id"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Overlap the FSDP all-gathers and reduce-scatters with compute (MaxText's GPU recipes do the same).
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
# A child rather than exec, to forward SIGTERM. Background jobs start with SIGINT ignored: the
# subshell restores it, so Ctrl-C (sent to the whole process group) still reaches star-jax.
(
  trap - INT QUIT
  exec "${star_jax[@]}" "$command" "$@" \
    --set "mesh.coordinator_address=$coordinator" \
    --set "mesh.num_processes=$num_processes" \
    --set "mesh.process_id=$pid"
) &
child=$!
forwarded=0
trap 'forwarded=1; kill -TERM "$child" 2>/dev/null || true' TERM
trap 'forwarded=1' INT  # the child has its own SIGINT from the terminal
status=0
wait "$child" || status=$?
while [[ $forwarded -eq 1 ]]; do  # a trapped signal ended the wait, not the child: wait again
  forwarded=0
  status=0
  wait "$child" || status=$?
done
exit "$status"
