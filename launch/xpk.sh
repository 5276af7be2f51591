#!/usr/bin/env bash
# GKE via XPK: one workload on a TPU slice (or several); every pod runs the same command
# and JAX finds the coordinator from the TPU environment (--coordinator=auto). The image
# holds the repo and its venv at --repo (default /app). The workload name comes from
# --workload or the workdir's last two folders (a sweep's and its run's): lowercase letters, digits and '-', at most 40
# characters (XPK's limit; a longer name is cut and ends in a hash).
USAGE="usage: launch/xpk.sh [--dry_run] --cluster=NAME --tpu_type=TYPE --image=IMAGE [--num_slices=N] [--workload=NAME] [--zone=ZONE] [--project=P] [--repo=DIR] CONFIG[:ARGS] WORKDIR [--config.KEY=VALUE ...]"
source "$(dirname "$0")/common.sh"
parse_args "$@"
: "${OPT_cluster:?--cluster=NAME is required}" "${OPT_tpu_type:?--tpu_type=TYPE (e.g. v5p-128) is required}" \
  "${OPT_image:?--image=IMAGE is required}"
workload_name() {
  local name
  name="$(printf '%s' "$1" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9-]\{1,\}/-/g' -e 's/^[^a-z]*//' -e 's/-*$//')"
  name="${name:-twlv}"
  if [ ${#name} -gt 40 ]; then
    name="${name:0:31}"; name="${name%%-}-$(printf '%s' "$1" | sha1sum | cut -c1-8)"
  fi
  printf '%s' "$name"
}
NAME="$(workload_name "${OPT_workload:-$(basename "$(dirname "$WORKDIR")")-$(basename "$WORKDIR")}")"
COMMAND="cd ${OPT_repo:-/app} && $(printf '%q ' env JAX_COMPILATION_CACHE_DIR="$CACHE" \
  .venv/bin/twlv train --config "$CONFIG" --workdir "$WORKDIR" --coordinator=auto "${OPTS[@]}")"
XPK=(xpk workload create --cluster "$OPT_cluster" --workload "$NAME" --docker-image "$OPT_image"
     --tpu-type "$OPT_tpu_type" --num-slices "${OPT_num_slices:-1}")
if [ -n "${OPT_zone:-}" ]; then XPK+=(--zone "$OPT_zone"); fi
if [ -n "${OPT_project:-}" ]; then XPK+=(--project "$OPT_project"); fi
run "${XPK[@]}" --command "$COMMAND"
