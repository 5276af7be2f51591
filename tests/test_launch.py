"""Launch scripts: the commands they would run (--dry_run)."""

import os
import shlex
import subprocess
import sys

import pytest

BARE = {"PATH": os.environ["PATH"]}       # no XLA_FLAGS of the test session


def dry_run(script, *args, env=BARE):
    return subprocess.run([f"launch/{script}", "--dry_run", *args], capture_output=True, text=True,
                          env=env)


def job_environment(command: list[str]) -> dict[str, str]:
    """The VAR=VALUE assignments after `env` in a command."""
    environment = {}
    for argument in command[command.index("env") + 1:]:
        if "=" not in argument:
            break
        name, value = argument.split("=", 1)
        environment[name] = value
    return environment


def test_local_sets_the_compilation_cache_beside_the_workdir():
    out = dry_run("local.sh", "configs/pretrain.py:variant=B", "/runs/b", "--config.optim.lr=1e-3").stdout
    assert out.strip() == ("env JAX_COMPILATION_CACHE_DIR=/runs/jax_cache .venv/bin/twlv train "
                           "--config configs/pretrain.py:variant=B --workdir /runs/b "
                           "--config.optim.lr=1e-3")


def _slurm_job(*args, env=BARE):
    out = dry_run("slurm.sh", *args, env=env).stdout
    wrap = next(a for a in shlex.split(out) if a.startswith("--wrap="))
    return out, shlex.split(wrap[len("--wrap="):])


def test_slurm_requeues_lets_jax_find_the_coordinator_and_sets_the_cache_and_flags():
    out, job = _slurm_job("--nodes=4", "--gpus_per_node=8", "--partition=a3",
                          "configs/pretrain.py:variant=L", "/shared/l", "--config.train.batch_size=512")
    assert out.startswith("sbatch --job-name=twlv --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 ")
    assert "--partition=a3 --signal=TERM@120 --requeue" in out
    assert job[:2] == ["srun", "env"]
    assert job[5:] == [".venv/bin/twlv", "train", "--config", "configs/pretrain.py:variant=L",
                       "--workdir", "/shared/l", "--coordinator=auto", "--config.train.batch_size=512"]
    assert job_environment(job) == {
        "JAX_COMPILATION_CACHE_DIR": "/shared/jax_cache", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
        "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"}
    # The submitter's own XLA_FLAGS are kept, in front.
    _, job = _slurm_job("c.py", "/shared/l", env={**BARE, "XLA_FLAGS": "--xla_dump_to=/d"})
    assert job_environment(job)["XLA_FLAGS"] == ("--xla_dump_to=/d "
                                                 "--xla_gpu_enable_latency_hiding_scheduler=true")


def test_every_xla_flag_the_launchers_set_is_known_to_our_jaxlib():
    # XLA aborts at start-up on an unknown flag; GPU flags parse in the CPU jaxlib too.
    _, job = _slurm_job("c.py", "/shared/l")
    flags = job_environment(job)["XLA_FLAGS"]
    result = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(2).block_until_ready()"],
                            env={**BARE, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_tpu_vm_runs_on_every_worker_with_the_cache_beside_the_workdir():
    out = dry_run("tpu_vm.sh", "--tpu=pod", "--zone=us-east5-a", "configs/pretrain.py:variant=L",
                  "/mnt/shared/l").stdout
    assert out.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --worker=all ")
    command = next(a for a in shlex.split(out) if a.startswith("--command="))[len("--command="):]
    assert command.startswith("cd twlv-jax && ")
    job = shlex.split(command.split("&& ", 1)[1])
    assert job_environment(job) == {"JAX_COMPILATION_CACHE_DIR": "/mnt/shared/jax_cache"}
    assert job[2:5] == [".venv/bin/twlv", "train", "--config"] and "--coordinator=auto" in job


@pytest.mark.parametrize("script,args,message", [
    ("local.sh", ["only_config"], "usage: launch/local.sh"),
    ("tpu_vm.sh", ["c.py", "w"], "--tpu=NAME is required"),
])
def test_missing_arguments(script, args, message):
    result = dry_run(script, *args)
    assert result.returncode != 0 and message in result.stderr
