#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker over gcloud ssh; JAX finds the
# coordinator from the TPU metadata (--coordinator=auto). The repo and .venv must exist
# on every worker (e.g. `make demo` there once); WORKDIR must be a place every worker
# shares: a bucket (gs://...) or a shared filesystem (Filestore/NFS); data.path may be
# gs:// too.
USAGE="usage: launch/tpu_vm.sh [--dry_run] --tpu=NAME --zone=ZONE [--repo=DIR] CONFIG[:ARGS] WORKDIR [--config.KEY=VALUE ...]"
source "$(dirname "$0")/common.sh"
parse_args "$@"
: "${OPT_tpu:?--tpu=NAME is required}" "${OPT_zone:?--zone=ZONE is required}"
COMMAND="cd ${OPT_repo:-twlv-jax} && $(printf '%q ' env JAX_COMPILATION_CACHE_DIR="$CACHE" \
  .venv/bin/twlv train --config "$CONFIG" --workdir "$WORKDIR" --coordinator=auto "${OPTS[@]}")"
run gcloud compute tpus tpu-vm ssh "$OPT_tpu" --zone="$OPT_zone" --worker=all --command="$COMMAND"
