"""`twlv train` end to end: real processes, real MP4s, real Orbax checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import SUB_ENV, wait_for_step

from twlv_jax import config as cfglib
from twlv_jax.data.synthetic import SynthOptions, write_synthetic
from twlv_jax.parallel.mesh import make_mesh
from twlv_jax.train import checkpoint as ckptlib
from twlv_jax.train import loop
from twlv_jax.train import metrics as metricslib
from twlv_jax.train import state as statelib


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(str(root), SynthOptions(train=48, val=16, frames=24, size=40))
    return root


def tiny_config(videos, *overrides, objective="twlv"):
    base = [("data.path", str(videos / "train.csv")), ("data.workers", "0"), ("train.batch_size", "8"),
            ("train.log_every", "1"), ("train.ckpt_every", "5"), ("train.steps", "12")]
    return cfglib.build(f"configs/pretrain.py:variant=tiny,objective={objective}",
                        base + [tuple(o.split("=", 1)) for o in overrides])


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def cli(videos, workdir, *overrides, steps=20):
    return [sys.executable, "-m", "twlv_jax", "train", "--config", "configs/pretrain.py:variant=tiny",
            "--workdir", str(workdir), f"--config.data.path={videos / 'train.csv'}",
            "--config.data.workers=1", "--config.train.batch_size=4", "--config.train.log_every=1",
            "--config.train.ckpt_every=10", f"--config.train.steps={steps}", *overrides]


def test_run_writes_metrics_config_events_and_checkpoints(videos, tmp_path):
    workdir = str(tmp_path / "run")
    summary = loop.run(tiny_config(videos, "train.probe_path=" + str(videos),
                                   "train.probe_every=6"), workdir)
    assert summary["outcome"] == "done" and summary["step"] == 12
    records = read_metrics(workdir)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 13))
    keys = {"loss", "loss/distill", "loss/pixel", "loss/latent", "lr", "grad_norm", "param_norm",
            "update_norm", "clips_per_s", "data_wait", "mfu", "ema_momentum"}
    assert keys <= set(records[-2])
    assert 0 <= records[-2]["data_wait"] <= 1 and records[-2]["clips_per_s"] > 0
    probes = [r for r in records if "probe/knn_label_motion" in r]
    assert [r["step"] for r in probes] == [0, 6, 12]           # baseline, then every 6 steps
    assert 0 <= probes[-1]["probe/knn_label_motion"] <= 1
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["variant"] == "tiny"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "12", "5"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    text = loop.summary_text(summary, workdir)
    assert "finished at step 12/12" in text and "probe/knn_label_motion" in text
    # `twlv inspect` reads it on one device (the run used 8), from metadata alone.
    inspect = subprocess.run([sys.executable, "-m", "twlv_jax", "inspect", workdir],
                             env=dict(SUB_ENV, XLA_FLAGS=""), capture_output=True, text=True, check=True)
    out = inspect.stdout
    assert "step        12   data batches consumed: 12" in out
    assert "model tiny, objective twlv, batch 8" in out and "jax 0.10.2" in out
    assert "params.student.blocks.blocks.mlp.fc1.kernel" in out and "(2, 64, 256)" in out
    assert "opt.1.mu.student.patch_embed.kernel" in out
    assert "(steps on disk: 5, 10, 12)" in out
    # Reusing the workdir resumes. A save killed mid-write leaves a temporary folder
    # without the commit marker: it is ignored and the previous checkpoint is used.
    os.makedirs(os.path.join(workdir, "checkpoints", "13.orbax-checkpoint-tmp", "state"))
    again = loop.run(tiny_config(videos, "train.steps=14"), workdir)
    assert again["start_step"] == 12 and again["step"] == 14


def test_data_wait_counts_only_time_after_the_last_step_finished():
    assert metricslib.idle_time(10.0, 12.0, None) == 0.0          # the step still ran
    assert metricslib.idle_time(10.0, 12.0, 9.0) == 2.0           # finished before the wait
    assert metricslib.idle_time(10.0, 12.0, 11.5) == 0.5          # finished during it
    with metricslib.Throughput() as timer:
        timer.waited(1.0, 3.0)                                    # nothing dispatched yet
        assert timer.data_wait == 2.0
        done = jax.block_until_ready(jax.numpy.ones(()))
        timer.dispatched(done)
        while not timer._last_step.done():
            time.sleep(0.01)
        start = time.perf_counter()
        timer.waited(start, start + 0.5)
        assert timer.data_wait == 2.5 and timer.steps == 1


def test_kill_9_and_restart_reproduce_the_uninterrupted_losses(videos, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(cli(videos, straight), env=SUB_ENV, check=True, capture_output=True)
    process = subprocess.Popen(cli(videos, killed), env=SUB_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_step(os.path.join(killed, "metrics.jsonl"), 13, process, 180)
    while not os.path.isdir(killed / "checkpoints" / "10"):   # committed (renamed from its tmp name)
        assert process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)          # the trainer and its data workers, at once
    process.wait()
    assert ckptlib.Checkpoints(str(killed / "checkpoints"), read_only=True).latest_step() == 10
    resumed = subprocess.run(cli(videos, killed), env=SUB_ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step 10" in resumed.stderr
    expected = [(r["step"], r["loss"]) for r in read_metrics(straight)]
    assert [(r["step"], r["loss"]) for r in read_metrics(killed)] == expected, resumed.stderr[-2000:]
    assert len(expected) == 20


def test_sigterm_during_steps_checkpoints_the_current_step(videos, tmp_path):
    workdir = tmp_path / "term"
    process = subprocess.Popen(cli(videos, workdir, steps=100000), env=SUB_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(os.path.join(workdir, "metrics.jsonl"), 13, process, 180)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split("/")[0])
    assert stopped_at >= 13 and stopped_at % 10               # not a periodic checkpoint step
    latest = ckptlib.Checkpoints(str(workdir / "checkpoints"), read_only=True).latest_step()
    assert latest == stopped_at


def test_sigterm_before_the_first_step_checkpoints_step_0(videos, tmp_path):
    workdir = tmp_path / "early"
    process = subprocess.Popen(cli(videos, workdir), env=SUB_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(workdir / "config.json"):     # written after restore-or-init
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out
    checkpoints = ckptlib.Checkpoints(str(workdir / "checkpoints"), read_only=True)
    assert checkpoints.latest_step() <= 1


def test_checkpoint_from_8_devices_restores_on_other_meshes(videos, tmp_path):
    workdir = str(tmp_path / "reshard")
    config = tiny_config(videos, "train.steps=5")
    loop.run(config, workdir)
    reference = None
    for shape, devices in (("1,-1,1", jax.devices()), ("1,1,1", jax.devices()[:1]),
                           ("4,2,1", jax.devices())):
        setup = statelib.build(config, make_mesh(shape, devices), total_steps=5, warmup_steps=1)
        checkpoints = ckptlib.Checkpoints(os.path.join(workdir, "checkpoints"), with_data=False,
                                          read_only=True)
        restored = checkpoints.manager.restore(5, args=ckptlib.ocp.args.Composite(
            state=ckptlib.ocp.args.PyTreeRestore(
                setup.abstract_state,
                restore_args=ckptlib.ocp.checkpoint_utils.construct_restore_args(setup.abstract_state))))
        state = restored["state"]
        kernel = state["params"]["student"]["blocks"]["blocks"]["mlp"]["fc1"]["kernel"]
        assert kernel.sharding == setup.state_shardings["params"]["student"]["blocks"]["blocks"]["mlp"][
            "fc1"]["kernel"]
        values = jax.tree.map(np.asarray, state)
        if reference is None:
            reference = values
        else:
            jax.tree.map(np.testing.assert_array_equal, values, reference)
    assert int(reference["step"]) == 5


def test_nan_stop_policy_names_the_step_and_term(videos, tmp_path):
    workdir = str(tmp_path / "nan_stop")
    with pytest.raises(loop.NonFiniteError,
                       match=r"step 8: non-finite loss/distill, loss/latent, loss/pixel .*"
                             r"stopping \(the last good checkpoint is step 5\)"):
        loop.run(tiny_config(videos, "train.inject_nan_batches=(7,)"), workdir)
    assert ckptlib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True).all_steps() == [5]


def test_nan_rollback_skips_the_batch_and_bounds_retries(videos, tmp_path, caplog):
    workdir = str(tmp_path / "nan_roll")
    summary = loop.run(tiny_config(videos, "train.inject_nan_batches=(7,)", "train.nan_policy=rollback"),
                       workdir)
    assert summary["outcome"] == "done" and summary["step"] == 12
    records = [r for r in read_metrics(workdir) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert all(np.isfinite(r["loss"]) for r in records)
    assert "rollback 1/3" in caplog.text and "skipping batch 7 of the data stream" in caplog.text
    meta = ckptlib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True).meta(12)
    assert meta["skipped_batches"] == [7] and meta["batches"] == 13
    # Each new bad batch costs a rollback; past train.nan_retries the run stops.
    with pytest.raises(loop.NonFiniteError, match=r"1 rollbacks already \(train.nan_retries=1\)"):
        loop.run(tiny_config(videos, "train.inject_nan_batches=(6,7)", "train.nan_policy=rollback",
                             "train.nan_retries=1"), str(tmp_path / "nan_roll2"))


def test_a_resumed_run_probes_at_its_end(videos, tmp_path):
    workdir = str(tmp_path / "probe_resume")
    overrides = ("train.probe_path=" + str(videos), "train.probe_every=0")
    loop.run(tiny_config(videos, *overrides, "train.steps=5"), workdir)
    summary = loop.run(tiny_config(videos, *overrides, "train.steps=7"), workdir)
    assert summary["start_step"] == 5 and summary["step"] == 7
    assert 0 <= summary["probe"]["probe/knn_label_motion"] <= 1
    assert summary["probe"]["probe/baseline_pixel"] > 0


def test_nan_in_the_gradients_rolls_back_to_finite_parameters(videos, tmp_path, caplog):
    workdir = str(tmp_path / "nan_grads")
    summary = loop.run(tiny_config(videos, "train.inject_nan_batches=(7,)", "train.nan_policy=rollback",
                                   "train.inject_nan_into=grads"), workdir)
    assert summary["outcome"] == "done" and summary["step"] == 12
    assert "non-finite" in caplog.text and "rollback 1/3" in caplog.text
    records = [r for r in read_metrics(workdir) if "loss" in r]
    assert all(np.isfinite(r["grad_norm"]) and np.isfinite(r["param_norm"]) for r in records)
    saved = ckptlib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True, with_data=False)
    meta = saved.meta(12)
    assert meta["skipped_batches"] == [7]


def test_init_from_is_strict_and_loads_params(videos, tmp_path):
    source = str(tmp_path / "source")
    loop.run(tiny_config(videos, "train.steps=5", objective="umt"), source)
    with pytest.raises(ValueError, match=r"params\.(latent|pixel)\..* is missing from the checkpoint"):
        loop.run(tiny_config(videos, "train.steps=6", f"init_from={source}"), str(tmp_path / "strict"))
    config = tiny_config(videos, "train.steps=6", f"init_from={source}", "init_strict=false")
    workdir = str(tmp_path / "loose")
    stream = loop.start_data(config, workdir)
    setup = loop.build_state(config, make_mesh("1,-1,1"), stream)
    checkpoints = ckptlib.Checkpoints(os.path.join(workdir, "checkpoints"))
    state, position, report, changes = loop.restore_or_init(
        loop.Run(config, workdir, None, checkpoints, stream, setup))
    assert report.startswith("init_from: loaded") and "missing from the checkpoint" in report
    assert position == loop.Position() and changes == {}
    saved = ckptlib.Checkpoints(os.path.join(source, "checkpoints"), read_only=True, with_data=False)
    kernel = state["params"]["student"]["patch_embed"]["kernel"]
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": {"student": {"patch_embed": {"kernel": jax.ShapeDtypeStruct(
        kernel.shape, kernel.dtype, sharding=one)}}}}
    source_state = saved.manager.restore(5, args=ckptlib.ocp.args.Composite(
        state=ckptlib.ocp.args.PyTreeRestore(
            target, restore_args=ckptlib.ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))["state"]
    np.testing.assert_array_equal(kernel, source_state["params"]["student"]["patch_embed"]["kernel"])
    np.testing.assert_array_equal(state["ema"]["patch_embed"]["kernel"], kernel)


def test_bad_config_fails_before_anything_runs(videos, tmp_path):
    result = subprocess.run(cli(videos, tmp_path / "bad", "--config.train.batch_size=3"), env=SUB_ENV,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "train.batch_size=3 is not divisible by the data-parallel size 2" in result.stderr
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")
