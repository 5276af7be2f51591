"""Launch scripts: the commands they would run (--dry_run)."""

import subprocess

import pytest


def dry_run(script, *args):
    return subprocess.run([f"launch/{script}", "--dry_run", *args], capture_output=True, text=True)


def test_local():
    out = dry_run("local.sh", "configs/pretrain.py:variant=B", "/runs/b", "--config.optim.lr=1e-3").stdout
    assert out.strip() == (".venv/bin/twlv train --config configs/pretrain.py:variant=B "
                           "--workdir /runs/b --config.optim.lr=1e-3")


def test_slurm_requeues_and_lets_jax_find_the_coordinator():
    out = dry_run("slurm.sh", "--nodes=4", "--gpus_per_node=8", "--partition=a3",
                  "configs/pretrain.py:variant=L", "/shared/l", "--config.train.batch_size=512").stdout
    assert out.startswith("sbatch --job-name=twlv --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 ")
    assert "--partition=a3 --signal=TERM@120 --requeue" in out
    assert ("srun\\ .venv/bin/twlv\\ train\\ --config\\ configs/pretrain.py:variant=L\\ --workdir\\ "
            "/shared/l\\ --coordinator=auto\\ --config.train.batch_size=512") in out


def test_tpu_vm_runs_on_every_worker():
    out = dry_run("tpu_vm.sh", "--tpu=pod", "--zone=us-east5-a", "configs/pretrain.py:variant=L",
                  "/mnt/shared/l").stdout
    assert out.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --worker=all ")
    assert "--coordinator=auto" in out and "cd\\ twlv-jax\\ \\&\\&\\ .venv/bin/twlv\\ train" in out


@pytest.mark.parametrize("script,args,message", [
    ("local.sh", ["only_config"], "usage: launch/local.sh"),
    ("tpu_vm.sh", ["c.py", "w"], "--tpu=NAME is required"),
])
def test_missing_arguments(script, args, message):
    result = dry_run(script, *args)
    assert result.returncode != 0 and message in result.stderr
