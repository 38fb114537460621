#!/usr/bin/env bash
# Installs bilstm-jax and the JAX build for an accelerator into a virtual environment.
# Runs on each Cloud TPU worker (launch/tpu.sh calls it) or once on a GPU cluster's
# shared filesystem.
set -euo pipefail

SCRIPT_NAME="setup_worker.sh"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${LAUNCH_DIR}/lib.sh"

usage() {
  cat <<EOF
Usage: launch/setup_worker.sh --accelerator=tpu|gpu|cpu [--venv=DIR] [--gcs] [--dry_run]

Creates a virtual environment with Python >= 3.11 and installs into it the JAX build
for the accelerator and this checkout of bilstm-jax (editable).

  --accelerator=KIND  tpu (jax[tpu]), gpu (jax[cuda12]) or cpu (jax)   [env BILSTM_ACCELERATOR]
  --venv=DIR          the environment to create or update (default: \$HOME/bilstm-venv)
                      [env BILSTM_VENV]
  --gcs               also install gcsfs, so that gs:// workdirs and data paths work
  --dry_run           print the commands without running them
  -h, --help          this help

Python: the first of python3.13, python3.12, python3.11, python3 that is >= 3.11; when
none is, uv (installed with pip --user) provides Python 3.12.
EOF
}

DRY_RUN=0
accelerator="${BILSTM_ACCELERATOR:-}"
venv="${BILSTM_VENV:-${HOME}/bilstm-venv}"
gcs=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --accelerator=*) accelerator="$(value_of "$1")" ;;
    --venv=*) venv="$(value_of "$1")" ;;
    --gcs) gcs=1 ;;
    --dry_run) DRY_RUN=1 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

require accelerator:--accelerator
case "${accelerator}" in
  tpu) jax_package="jax[tpu]" ;;
  gpu) jax_package="jax[cuda12]" ;;
  cpu) jax_package="jax" ;;
  *) die "--accelerator must be tpu, gpu or cpu, not '${accelerator}'" ;;
esac
repo_dir="$(dirname "${LAUNCH_DIR}")"
if [[ ! -f "${repo_dir}/pyproject.toml" ]]; then
  die "no pyproject.toml in ${repo_dir}: run the copy of this script inside a bilstm-jax checkout"
fi

# The first interpreter >= 3.11 on PATH; empty when there is none.
find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "${candidate}" >/dev/null 2>&1 &&
      "${candidate}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      printf '%s' "${candidate}"
      return 0
    fi
  done
}

main() {
  if [[ -x "${venv}/bin/python" ]]; then
    log "updating the existing environment ${venv}"
  else
    local python
    python="$(find_python)"
    if [[ -n "${python}" ]]; then
      run "${python}" -m venv "${venv}"
    else
      log "no Python >= 3.11 on PATH: getting Python 3.12 through uv"
      run python3 -m pip install --user --upgrade uv
      run python3 -m uv venv --seed --python=3.12 "${venv}"
    fi
  fi
  local pip=("${venv}/bin/python" -m pip install --upgrade)
  run "${pip[@]}" pip
  run "${pip[@]}" "${jax_package}"
  if ((gcs)); then
    run "${pip[@]}" gcsfs
  fi
  run "${pip[@]}" -e "${repo_dir}"
  # Only the version: touching the devices here would hang a pod slice whose workers
  # finish installing at different times.
  run "${venv}/bin/python" -c 'import bilstm_jax, jax; print("jax", jax.__version__)'
}

main
