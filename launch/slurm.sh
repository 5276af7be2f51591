#!/usr/bin/env bash
# SLURM GPU cluster: one process per node, all its GPUs; JAX finds the coordinator from
# SLURM's environment (--coordinator=auto). WORKDIR must be on a shared filesystem.
# Besides the compilation cache, the job sets XLA's latency-hiding scheduler (FSDP's
# all-gathers and reduce-scatters overlap the layers' compute; NVIDIA's JAX images set
# it too) and lets JAX take 90% of each GPU's memory instead of its default 75%
# (`twlv plan` counts the whole card).
USAGE="usage: launch/slurm.sh [--dry_run] [--nodes=N] [--gpus_per_node=G] [--partition=P] [--time=HH:MM:SS] CONFIG[:ARGS] WORKDIR [--config.KEY=VALUE ...]"
source "$(dirname "$0")/common.sh"
parse_args "$@"
NODES="${OPT_nodes:-1}"; GPUS="${OPT_gpus_per_node:-8}"
SBATCH=(sbatch --job-name=twlv --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS"
        --time="${OPT_time:-24:00:00}" --output="$WORKDIR/slurm-%j.out")
if [ -n "${OPT_partition:-}" ]; then SBATCH+=(--partition="$OPT_partition"); fi
ENV=(env JAX_COMPILATION_CACHE_DIR="$CACHE" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
     XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true")
# The job script resumes from WORKDIR on requeue: SIGTERM makes twlv train save and exit.
run "${SBATCH[@]}" --signal=TERM@120 --requeue --wrap="srun $(printf '%q ' "${ENV[@]}" \
  "${TWLV:-.venv/bin/twlv}" train --config "$CONFIG" --workdir "$WORKDIR" --coordinator=auto "${OPTS[@]}")"
