#!/usr/bin/env bash
# Trains bilstm-jax on a Cloud TPU VM (one host or a pod slice): creates the VM, copies
# and installs the code and the data on every worker, runs the trainer on all workers at
# once, streams its output, and deletes the VM.
set -euo pipefail

SCRIPT_NAME="tpu.sh"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "${LAUNCH_DIR}")"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${LAUNCH_DIR}/lib.sh"

usage() {
  cat <<EOF
Usage: launch/tpu.sh --name=NAME --zone=ZONE --accelerator=TYPE --config=FILE[:VARIANTS]
                     --workdir=gs://BUCKET/DIR [--data=gs://BUCKET/polyvore] [options]
                     [-- TRAINER_FLAGS...]

Runs 'python -m bilstm_jax.main --distributed' on every worker of a Cloud TPU VM. On
Cloud TPU, jax.distributed.initialize() finds the other workers by itself, so no
coordinator, process count or id is passed.

Required (flag or environment variable):
  --name=NAME          TPU VM (and queued resource) name          [TPU_NAME]
  --zone=ZONE          e.g. us-central2-b                          [TPU_ZONE]
  --accelerator=TYPE   e.g. v4-8, v4-32, v5litepod-16, v6e-8       [TPU_ACCELERATOR]
                       (for the create step)
  --config=FILE[:ARGS] config, relative to the repository root,
                       e.g. configs/bilstm.py:tpu (run step)       [BILSTM_CONFIG]
  --workdir=DIR        checkpoints, metrics and report.json (run step); must be
                       gs:// unless --keep (the VM's disks go when it is
                       deleted)                                    [BILSTM_WORKDIR]
Optional:
  --version=VERSION    TPU runtime version (default by generation: v2-v4
                       tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                       v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)    [TPU_VERSION]
  --project=PROJECT    Google Cloud project (default: gcloud's)   [TPU_PROJECT]
  --data=gs://PATH     the Maryland Polyvore directory (label/, images/), copied to
                       every worker and passed as --config.data.root [BILSTM_DATA]
  --weights=gs://FILE  ImageNet Inception v3 weights (.safetensors or .h5), copied to
                       every worker and passed as --config.model.inception.weights
  --queued             create a queued resource instead of a VM directly, and wait
                       until it is ACTIVE (for capacity that is not there yet)
  --spot               spot (preemptible) capacity
  --repo=URL           clone this git repository on the workers instead of copying
                       the local checkout; --ref=REV picks the revision
  --steps=LIST         comma-separated subset of create,setup,run,logs,delete
                       (default create,setup,run,delete; with --detach
                       create,setup,run). Setup copies code, data and weights and
                       installs; rerun '--steps=setup,run' after changing the code.
  --detach             start the trainer in the background on the workers and return;
                       follow it with --steps=logs, delete with --steps=delete
  --keep               do not delete the VM at the end
  --dry_run            print every command instead of running it (needs no gcloud)
  -h, --help           this help
Everything after '--' goes to the trainer, e.g. -- --config.train.num_steps=1000.

When the steps include delete, the VM is deleted at the end even if a step fails or
the script is interrupted. Logs: the trainer's output streams to this terminal and is
kept on each worker in ~/bilstm-jax.log.

Example:
  launch/tpu.sh --name=bilstm --zone=us-central2-b --accelerator=v4-32 \\
      --config=configs/bilstm.py:tpu --data=gs://BUCKET/polyvore \\
      --workdir=gs://BUCKET/runs/tpu
EOF
}

# Settings.
DRY_RUN=0
name="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
accelerator="${TPU_ACCELERATOR:-}"
version="${TPU_VERSION:-}"
project="${TPU_PROJECT:-}"
config="${BILSTM_CONFIG:-}"
workdir="${BILSTM_WORKDIR:-}"
data="${BILSTM_DATA:-}"
weights=""
queued=0
spot=0
repo=""
ref=""
steps=""
detach=0
keep=0
trainer_args=()

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name=*) name="$(value_of "$1")" ;;
    --zone=*) zone="$(value_of "$1")" ;;
    --accelerator=*) accelerator="$(value_of "$1")" ;;
    --version=*) version="$(value_of "$1")" ;;
    --project=*) project="$(value_of "$1")" ;;
    --config=*) config="$(value_of "$1")" ;;
    --workdir=*) workdir="$(value_of "$1")" ;;
    --data=*) data="$(value_of "$1")" ;;
    --weights=*) weights="$(value_of "$1")" ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --repo=*) repo="$(value_of "$1")" ;;
    --ref=*) ref="$(value_of "$1")" ;;
    --steps=*) steps="$(value_of "$1")" ;;
    --detach) detach=1 ;;
    --keep) keep=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; trainer_args=("$@"); break ;;
    *) die "unknown argument: $1 (trainer flags go after '--')" ;;
  esac
  shift
done

# Where things live on each worker (ssh starts in the home directory).
REMOTE_CODE="bilstm-jax"
REMOTE_VENV="bilstm-venv"
REMOTE_LOG="bilstm-jax.log"
REMOTE_DATA="/tmp/bilstm-data/polyvore"
REMOTE_WEIGHTS_DIR="/tmp/bilstm-data/weights"

default_version() {
  case "$1" in
    v2-* | v3-* | v4-*) printf 'tpu-ubuntu2204-base' ;;
    v5litepod-* | v5e-*) printf 'v2-alpha-tpuv5-lite' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
  esac
}

validate() {
  require name:--name zone:--zone
  if [[ ! "${name}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
    die "--name=${name}: use lowercase letters, digits and '-', starting with a letter"
  fi
  if [[ -z "${steps}" ]]; then
    steps="create,setup,run,delete"
    ((detach == 0)) || steps="create,setup,run"
    ((keep == 0)) || steps="${steps/,delete/}"
  fi
  local step step_list
  IFS=, read -ra step_list <<<"${steps}"
  for step in "${step_list[@]}"; do
    case "${step}" in
      create | setup | run | logs | delete) ;;
      *) die "--steps: unknown step '${step}'; choose from create,setup,run,logs,delete" ;;
    esac
  done
  if has_step create; then
    require accelerator:--accelerator
    if [[ ! "${accelerator}" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]]; then
      die "--accelerator=${accelerator} is not a TPU type like v4-32 or v5litepod-16"
    fi
    if [[ -z "${version}" ]]; then
      version="$(default_version "${accelerator}")"
      [[ -n "${version}" ]] || die "no default runtime for ${accelerator}: pass --version"
    fi
  fi
  if has_step delete && ((keep)); then
    die "--keep contradicts the delete step in --steps=${steps}"
  fi
  if has_step delete && has_step run && ((detach)); then
    die "--detach with the delete step would delete the VM under the running trainer"
  fi

  if has_step run; then
    require config:--config workdir:--workdir
    if [[ -z "${repo}" ]]; then
      require_config_file "${REPO_DIR}" "${config}"
    fi
    if [[ "${workdir}" != gs://* ]] && has_step delete; then
      die "--workdir=${workdir} is on the VM and would be lost when it is deleted: use a gs:// path, or --keep"
    fi
  fi
  if has_step setup; then
    if [[ -n "${data}" && "${data}" != gs://* ]]; then
      die "--data=${data}: give the gs:// path of the Polyvore directory"
    fi
    if [[ -n "${weights}" && "${weights}" != gs://* ]]; then
      die "--weights=${weights}: give a gs:// path"
    fi
    if [[ -n "${ref}" && -z "${repo}" ]]; then
      die "--ref needs --repo (the local checkout is copied as it is)"
    fi
  fi
  if ((DRY_RUN == 0)); then
    require_tools gcloud
    if has_step setup && [[ -z "${repo}" ]]; then
      require_tools git tar
    fi
  fi
}

has_step() {
  [[ ",${steps}," == *",$1,"* ]]
}

# gcloud flags naming the TPU.
tpu_flags() {
  gcloud_flags=(--zone="${zone}")
  if [[ -n "${project}" ]]; then
    gcloud_flags+=(--project="${project}")
  fi
}

# Runs a shell command line on every worker at once.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "${name}" "${gcloud_flags[@]}" --worker=all --command="$1"
}

step_create() {
  local capacity=()
  ((spot == 0)) || capacity=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "${name}" "${gcloud_flags[@]}" \
      --node-id="${name}" --accelerator-type="${accelerator}" \
      --runtime-version="${version}" "${capacity[@]}"
    wait_until_active
  else
    run gcloud compute tpus tpu-vm create "${name}" "${gcloud_flags[@]}" \
      --accelerator-type="${accelerator}" --version="${version}" "${capacity[@]}"
  fi
}

wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "${name}" "${gcloud_flags[@]}"
    --format='value(state.state)')
  if ((DRY_RUN)); then
    show "${describe[@]}"
    echo "# (repeated every 30 s until the state is ACTIVE)"
    return
  fi
  local state
  while true; do
    state="$("${describe[@]}")"
    log "queued resource ${name}: ${state}"
    case "${state}" in
      ACTIVE) return ;;
      FAILED | SUSPENDED) log "queued resource ${name} is ${state}"; return 1 ;;
    esac
    sleep 30
  done
}

step_setup() {
  if [[ -n "${repo}" ]]; then
    local clone
    clone="rm -rf ${REMOTE_CODE} && git clone $(quote "${repo}") ${REMOTE_CODE}"
    if [[ -n "${ref}" ]]; then
      clone+=" && git -C ${REMOTE_CODE} checkout $(quote "${ref}")"
    fi
    on_all_workers "${clone}"
  else
    # The checkout as it is, uncommitted changes included, without ignored files.
    local tarball="${TMPDIR:-/tmp}/${name}-code.tgz"
    run bash -c "$(quote git -C "${REPO_DIR}" ls-files -z --cached --others --exclude-standard) \
| $(quote tar -C "${REPO_DIR}" --null -T - -czf "${tarball}")"
    run gcloud compute tpus tpu-vm scp "${tarball}" "${name}:${REMOTE_CODE}.tgz" \
      "${gcloud_flags[@]}" --worker=all
    on_all_workers "rm -rf ${REMOTE_CODE} && mkdir -p ${REMOTE_CODE} \
&& tar -xzf ${REMOTE_CODE}.tgz -C ${REMOTE_CODE}"
  fi
  local install=(bash "${REMOTE_CODE}/launch/setup_worker.sh" --accelerator=tpu
    "--venv=\$HOME/${REMOTE_VENV}")
  if [[ "${workdir}${data}${weights}" == *gs://* ]]; then
    install+=(--gcs)
  fi
  # \$HOME stays for the worker's shell to expand.
  on_all_workers "${install[*]}"
  if [[ -n "${data}" ]]; then
    on_all_workers "mkdir -p ${REMOTE_DATA} && gcloud storage rsync --recursive \
$(quote "${data}") ${REMOTE_DATA}"
  fi
  if [[ -n "${weights}" ]]; then
    on_all_workers "mkdir -p ${REMOTE_WEIGHTS_DIR} && gcloud storage cp \
$(quote "${weights}") ${REMOTE_WEIGHTS_DIR}/"
  fi
}

# The trainer's command line on a worker (relative to the code directory).
trainer_command() {
  # --distributed: jax.distributed.initialize() with no arguments; Cloud TPU supplies them.
  local cmd=("../${REMOTE_VENV}/bin/python" -m bilstm_jax.main --config="${config}"
    --workdir="${workdir}" --distributed)
  if [[ -n "${data}" ]]; then
    cmd+=(--config.data.root="${REMOTE_DATA}")
  fi
  if [[ -n "${weights}" ]]; then
    cmd+=(--config.model.inception.weights="${REMOTE_WEIGHTS_DIR}/${weights##*/}")
  fi
  cmd+=("${trainer_args[@]}")
  quote "${cmd[@]}"
}

step_run() {
  local trainer
  trainer="$(trainer_command)"
  if ((detach)); then
    on_all_workers "cd ${REMOTE_CODE} && nohup ${trainer} > ../${REMOTE_LOG} 2>&1 < /dev/null &"
    log "started; follow with: launch/tpu.sh --name=${name} --zone=${zone} --steps=logs"
  else
    on_all_workers "set -o pipefail; cd ${REMOTE_CODE} && ${trainer} 2>&1 | tee ../${REMOTE_LOG}"
  fi
}

step_logs() {
  # Process 0 writes the metrics; the other workers' logs are on their disks.
  run gcloud compute tpus tpu-vm ssh "${name}" "${gcloud_flags[@]}" --worker=0 \
    --command="tail -n 200 -F ${REMOTE_LOG}"
}

step_delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "${name}" "${gcloud_flags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "${name}" "${gcloud_flags[@]}" --quiet
  fi
}

main() {
  validate
  tpu_flags
  if has_step delete; then
    # Delete even when a step fails or the run is interrupted: an idle slice costs money.
    trap step_delete EXIT
    trap 'exit 130' INT TERM
  fi
  local step
  for step in create setup run logs; do
    if has_step "${step}"; then
      "step_${step}"
    fi
  done
}

main
