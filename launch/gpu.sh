#!/usr/bin/env bash
# Trains bilstm-jax on GPU hosts given by hand: one JAX process per host, started over
# ssh, with the coordinator address, process count and process id that
# jax.distributed.initialize needs. (Under SLURM use launch/slurm.sbatch instead.)
set -euo pipefail

SCRIPT_NAME="gpu.sh"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "${LAUNCH_DIR}")"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${LAUNCH_DIR}/lib.sh"

usage() {
  cat <<EOF
Usage: launch/gpu.sh --hosts=HOST0,HOST1,... --config=FILE[:VARIANTS] --workdir=DIR
                     [options] [-- TRAINER_FLAGS...]

Starts 'python -m bilstm_jax.main' on every host at once (one process per host, using
all of its GPUs) and streams their output, each line prefixed with its process id.
Process i runs on the i-th host; process 0's host is the coordinator. If any process
fails, the others are stopped and the script exits non-zero.

Required (flag or environment variable):
  --hosts=H0,H1,...    hosts reachable by 'ssh HOST' without a password; 'localhost'
                       runs locally without ssh                    [BILSTM_HOSTS]
  --config=FILE[:ARGS] config relative to the code directory,
                       e.g. configs/bilstm.py:gpu                  [BILSTM_CONFIG]
  --workdir=DIR        on a filesystem all hosts share (checkpoints are written
                       collectively)                               [BILSTM_WORKDIR]
Optional:
  --port=PORT          coordinator port on the first host (default 12355) [BILSTM_PORT]
  --code_dir=DIR       the bilstm-jax checkout on the hosts (default: this checkout's
                       path, as on a shared filesystem)            [BILSTM_CODE_DIR]
  --python=PATH        Python on the hosts with bilstm-jax installed (default python3;
                       see launch/setup_worker.sh --accelerator=gpu) [BILSTM_PYTHON]
  --log_dir=DIR        also write each process's output to DIR/process_<i>.log here
  --dry_run            print every command instead of running it
  -h, --help           this help
Everything after '--' goes to the trainer, e.g. -- --config.train.num_steps=1000.

Example:
  launch/gpu.sh --hosts=gpu01,gpu02 --config=configs/bilstm.py:gpu \\
      --python=/shared/bilstm-venv/bin/python --workdir=/shared/runs/gpu
EOF
}

DRY_RUN=0
hosts="${BILSTM_HOSTS:-}"
config="${BILSTM_CONFIG:-}"
workdir="${BILSTM_WORKDIR:-}"
port="${BILSTM_PORT:-12355}"
code_dir="${BILSTM_CODE_DIR:-${REPO_DIR}}"
python="${BILSTM_PYTHON:-python3}"
log_dir=""
trainer_args=()

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --hosts=*) hosts="$(value_of "$1")" ;;
    --config=*) config="$(value_of "$1")" ;;
    --workdir=*) workdir="$(value_of "$1")" ;;
    --port=*) port="$(value_of "$1")" ;;
    --code_dir=*) code_dir="$(value_of "$1")" ;;
    --python=*) python="$(value_of "$1")" ;;
    --log_dir=*) log_dir="$(value_of "$1")" ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; trainer_args=("$@"); break ;;
    *) die "unknown argument: $1 (trainer flags go after '--')" ;;
  esac
  shift
done

is_local() {
  [[ "$1" == localhost || "$1" == 127.0.0.1 ]]
}

validate() {
  require hosts:--hosts config:--config workdir:--workdir
  IFS=, read -ra host_list <<<"${hosts}"
  local host
  for host in "${host_list[@]}"; do
    [[ -n "${host}" ]] || die "--hosts=${hosts} has an empty host name"
  done
  if [[ ! "${port}" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "--port=${port} is not a port number"
  fi
  if [[ "${code_dir}" == "${REPO_DIR}" ]]; then
    require_config_file "${REPO_DIR}" "${config}"
  fi
  if ((DRY_RUN == 0)); then
    for host in "${host_list[@]}"; do
      is_local "${host}" || require_tools ssh
    done
  fi
}

# The command line process $1 runs on its host.
process_command() {
  local cmd=("${python}" -m bilstm_jax.main --config="${config}" --workdir="${workdir}"
    --coordinator_address="${host_list[0]}:${port}" --num_processes="${#host_list[@]}"
    --process_id="$1" "${trainer_args[@]}")
  # exec: stopping the ssh (or local shell) stops the trainer with it.
  printf 'cd %s && exec %s' "$(quote "${code_dir}")" "$(quote "${cmd[@]}")"
}

# Copies stdin to stdout with a "[process i]" prefix, and to a log file if given.
prefix_lines() {
  local tag="$1" log_file="$2" line
  while IFS= read -r line || [[ -n "${line}" ]]; do
    printf '[process %s] %s\n' "${tag}" "${line}"
    if [[ -n "${log_file}" ]]; then
      printf '%s\n' "${line}" >>"${log_file}"
    fi
  done
}

pids=()

stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
}

main() {
  validate
  if [[ -n "${log_dir}" ]]; then
    run mkdir -p "${log_dir}"
  fi
  local i host command launcher log_file
  for i in "${!host_list[@]}"; do
    host="${host_list[i]}"
    command="$(process_command "${i}")"
    if is_local "${host}"; then
      launcher=(bash -c "${command}")
    else
      launcher=(ssh -o BatchMode=yes "${host}" "${command}")
    fi
    show "${launcher[@]}"
    if ((DRY_RUN)); then
      continue
    fi
    log_file=""
    if [[ -n "${log_dir}" ]]; then
      log_file="${log_dir}/process_${i}.log"
    fi
    (exec "${launcher[@]}" > >(prefix_lines "${i}" "${log_file}") 2>&1) &
    pids+=("$!")
  done
  if ((DRY_RUN)); then
    return 0
  fi
  trap 'stop_all; exit 130' INT TERM
  local remaining=${#pids[@]}
  while ((remaining > 0)); do
    if ! wait -n; then
      log "a process failed: stopping the others"
      stop_all
      wait || true
      exit 1
    fi
    remaining=$((remaining - 1))
  done
  wait
  log "all ${#pids[@]} processes finished"
}

main
