# Helpers shared by the launch scripts; sourced, never run.
# shellcheck shell=bash
#
# The sourcing script sets SCRIPT_NAME and DRY_RUN (0 or 1) and calls usage().

# Prints an error naming the script and exits 2 (bad settings; nothing was run).
die() {
  printf '%s: error: %s\n' "${SCRIPT_NAME}" "$*" >&2
  printf "Run '%s --help' for the settings.\n" "${SCRIPT_NAME}" >&2
  exit 2
}

log() {
  printf '[%s] %s\n' "${SCRIPT_NAME}" "$*" >&2
}

# Prints a command shell-quoted after "+ ": to stdout in dry-run mode (that is the
# output), to stderr otherwise (so it never mixes with a command's captured output).
show() {
  local line
  line="+$(printf ' %q' "$@")"
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '%s\n' "${line}"
  else
    printf '%s\n' "${line}" >&2
  fi
}

# Prints a command, then runs it unless in dry-run mode.
run() {
  show "$@"
  if [[ "${DRY_RUN}" != 1 ]]; then
    "$@"
  fi
}

# The value of a "--key=value" argument, or dies when it is empty.
value_of() {
  local arg="$1" value="${1#*=}"
  if [[ "${arg}" != *=* || -z "${value}" ]]; then
    die "${arg%%=*} needs a value: ${arg%%=*}=VALUE"
  fi
  printf '%s' "${value}"
}

# Dies unless every named variable is set; "NAME:--flag" pairs name the flag to use.
# (The locals have odd names so that they never shadow the variables named.)
require() {
  local _req_pair _req_var _req_missing=()
  for _req_pair in "$@"; do
    _req_var="${_req_pair%%:*}"
    if [[ -z "${!_req_var:-}" ]]; then
      _req_missing+=("${_req_pair#*:}")
    fi
  done
  if ((${#_req_missing[@]})); then
    die "missing required setting(s): ${_req_missing[*]}"
  fi
}

# Dies unless the config file named in "file.py[:variants]" exists under $1.
require_config_file() {
  local root="$1" config="$2"
  local file="${config%%:*}"
  if [[ "${file}" != /* ]]; then
    file="${root}/${file}"
  fi
  if [[ ! -f "${file}" ]]; then
    die "config file not found: ${file} (from --config=${config})"
  fi
}

# Dies unless the named tools are on PATH (checked only for real runs).
require_tools() {
  local tool
  for tool in "$@"; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
      die "'${tool}' is not installed or not on PATH (needed for a real run; --dry_run works without it)"
    fi
  done
}

# A shell-quoted command line, for commands that run on another machine.
quote() {
  local out
  out="$(printf '%q ' "$@")"
  printf '%s' "${out% }"
}
