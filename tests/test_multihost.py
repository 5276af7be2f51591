"""Two processes on localhost train together through `jax.distributed` (gloo collectives)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from twlv_jax import config as cfglib
from twlv_jax.data.synthetic import SynthOptions, write_synthetic
from twlv_jax.parallel.mesh import make_mesh
from twlv_jax.train import checkpoint as ckptlib
from twlv_jax.train import state as statelib

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
           "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_with_disjoint_slices_and_one_checkpoint(tmp_path):
    write_synthetic(str(tmp_path / "data"), SynthOptions(train=32, val=0, frames=24, size=40))
    workdir = tmp_path / "run"
    port = free_port()
    overrides = [f"--config.data.path={tmp_path / 'data' / 'train.csv'}", "--config.data.workers=0",
                 "--config.train.batch_size=4", "--config.train.steps=6", "--config.train.ckpt_every=3",
                 "--config.train.log_every=1"]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "twlv_jax", "train", "--config", "configs/pretrain.py:variant=tiny",
         "--workdir", str(workdir), f"--coordinator=localhost:{port}", "--num_processes=2",
         f"--process_id={i}", "--init_timeout=60", *overrides],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    # Each process read its own half of the 32 videos, on a 4-device mesh over 2 processes.
    assert "process 0/2 reads 16" in outputs[0][1] and "process 1/2 reads 16" in outputs[1][1]
    assert "over 4 devices" in outputs[0][1] and "2 process(es)" in outputs[0][1]
    assert "finished at step 6/6" in outputs[0][0] and "twlv train:" not in outputs[1][0]  # one report
    with open(workdir / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 5, 6]   # written once
    data_dir = workdir / "checkpoints" / "6" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
    # One process restores the shared checkpoint onto its own devices.
    config = cfglib.build("configs/pretrain.py:variant=tiny", [("train.batch_size", "4")])
    setup = statelib.build(config, make_mesh("1,-1,1", jax.devices()[:4]), total_steps=6, warmup_steps=1)
    checkpoints = ckptlib.Checkpoints(str(workdir / "checkpoints"), read_only=True, with_data=False)
    assert checkpoints.meta(6)["process_count"] == 2
    state = checkpoints.manager.restore(6, args=ckptlib.ocp.args.Composite(
        state=ckptlib.ocp.args.PyTreeRestore(
            setup.abstract_state,
            restore_args=ckptlib.ocp.checkpoint_utils.construct_restore_args(setup.abstract_state))))["state"]
    assert int(state["step"]) == 6
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state["params"]))


def test_unreachable_coordinator_fails_fast_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "twlv_jax", "train", "--config", "configs/pretrain.py:variant=tiny",
         "--workdir", str(tmp_path / "w"), f"--coordinator=localhost:{free_port()}",
         "--num_processes=2", "--process_id=1", "--init_timeout=2"],
        env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot reach the coordinator localhost:" in result.stderr and "within 2 s" in result.stderr
