# Shared by the launch scripts: argument parsing and --dry_run.
# Each script sets USAGE, then: source "$(dirname "$0")/common.sh"; parse_args "$@".
set -euo pipefail
DRY_RUN=0
OPTS=()
parse_args() {
  POSITIONAL=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry_run) DRY_RUN=1 ;;
      --help|-h) echo "$USAGE"; exit 0 ;;
      --config.*) OPTS+=("$1") ;;
      --*=*) name="${1%%=*}"; printf -v "OPT_${name#--}" '%s' "${1#*=}" ;;
      *) POSITIONAL+=("$1") ;;
    esac
    shift
  done
  if [ ${#POSITIONAL[@]} -ne 2 ]; then echo "$USAGE" >&2; exit 2; fi
  CONFIG="${POSITIONAL[0]}"; WORKDIR="${POSITIONAL[1]}"
  # JAX's persistent compilation cache, beside the workdir (a sweep's runs share
  # ROOT/jax_cache): a restarted, requeued or preempted job reads its compiled step back
  # instead of compiling it again. Set on the command line, where the job runs.
  CACHE="$(dirname "$WORKDIR")/jax_cache"
}
# Prints the command; runs it unless --dry_run.
run() {
  printf '%q ' "$@"; echo
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
