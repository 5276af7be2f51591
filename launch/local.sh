#!/usr/bin/env bash
# One machine, every local device (CPU, one or more GPUs, or a single TPU VM host).
USAGE="usage: launch/local.sh [--dry_run] CONFIG[:ARGS] WORKDIR [--config.KEY=VALUE ...]"
source "$(dirname "$0")/common.sh"
parse_args "$@"
run env JAX_COMPILATION_CACHE_DIR="$CACHE" \
  "${TWLV:-.venv/bin/twlv}" train --config "$CONFIG" --workdir "$WORKDIR" "${OPTS[@]}"
