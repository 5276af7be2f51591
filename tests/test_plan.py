"""`twlv plan`: the train step compiled ahead of time for CPU and TPU targets, never run."""

import importlib.util
import os
import subprocess
import sys

import pytest

from twlv_jax import config as cfglib
from twlv_jax.plan import cli
from twlv_jax.plan import targets as targetlib
from twlv_jax.plan.compile import compile_plan, prepare

TINY = "configs/pretrain.py:variant=tiny"
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="TPU targets need libtpu: `make plan-tpu` installs it")


def _plan(target, *overrides):
    target = targetlib.parse(target)
    config = cfglib.build(TINY, [tuple(o.split("=", 1)) for o in overrides])
    return compile_plan(config, target, targetlib.devices(target))


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_targets_parse_and_bad_ones_say_what_is_expected():
    t = targetlib.parse("tpu:v5p:2x2x1")
    assert (t.platform, t.num_devices, t.memory, t.peak) == ("tpu", 4, 95 * 2**30, 459e12)
    assert targetlib.parse("tpu:v5e:16x16").num_devices == 256
    assert targetlib.parse("gpu:h200:8").num_devices == 8
    for bad in ("tpu:v9:2x2", "gpu:h100", "cpu:x", "cpu:0"):
        with pytest.raises(targetlib.TargetError, match="expected cpu:N"):
            targetlib.parse(bad)
    with pytest.raises(targetlib.TargetError, match="device_count=64"):
        targetlib.devices(targetlib.parse("cpu:64"))


def test_cpu8_fsdp_holds_an_eighth_of_the_parameters_of_dp(capsys):
    # ViT-S on tiny clips: its biases and norms (replicated) are a small share, as in B and L.
    small = ["--config.model.variant=S", "--config.objective.latent.predictor_depth=1",
             "--config.objective.pixel.decoder_depth=1"]
    config = cfglib.build(TINY, [tuple(o[len("--config."):].split("=")) for o in small]
                          + [("mesh.rules", "dp")])
    _, _, dp = prepare(config, targetlib.devices(targetlib.parse("cpu:8")))
    code, out, _ = _main(capsys, "--config", TINY, "--target", "cpu:8", *small)
    assert code == 0
    assert "cpu:8: 8 devices, mesh data=1 fsdp=8 tensor=1, rules fsdp, remat none, batch 8" in out
    assert "total (arguments + outputs - donated + temps)" in out and "clips/s" in out
    line = next(x for x in out.splitlines() if "parameters (float32)" in x)
    fsdp = float(line.split()[-1]) * (2**30 if "GiB" in out.splitlines()[2] else 2**20)
    assert fsdp == pytest.approx(dp["parameters"] / 8, rel=0.1)
    assert dp["optimizer"] == pytest.approx(2 * dp["parameters"], rel=0.01)


def test_a_config_too_large_fails_with_the_memory_message(capsys):
    code, out, err = _main(capsys, "--config", TINY, "--target", "cpu:8", "--memory", "0.001",
                           "--no_suggest")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("twlv plan: does not fit on cpu:8: the step needs ")
    assert "per device, the target's devices have 1.02 MiB" in err
    assert "temporaries" in out                      # the breakdown is still printed


def test_suggestions_try_full_remat_then_more_microbatches():
    config = cfglib.build(TINY, [("train.batch_size", "64")])          # 8 clips per device
    assert cli.candidates(config, 8) == [("full", 1), ("none", 2), ("full", 2), ("none", 4)]
    config = cfglib.build(TINY, [("train.batch_size", "16"), ("model.remat", "full")])
    assert cli.candidates(config, 8) == [("full", 2)]


def test_a_suggestion_is_compiled_and_shown_to_fit(capsys):
    # The global batch stays 32: two microbatches of 2 clips per device fit, one of 4 does not.
    fits = _plan("cpu:8", "train.batch_size=32", "model.remat=full", "train.microbatches=2")
    memory = fits.total * 1.01 / 2**30
    code, _, err = _main(capsys, "--config", TINY, "--target", "cpu:8", "--memory", f"{memory}",
                         "--config.train.batch_size=32", "--config.model.remat=full")
    assert code == 2 and "fits with --config.model.remat=full --config.train.microbatches=2" in err


def _plan_process(*argv):
    """`twlv plan` in a process of its own (as users run it: JAX starts for the target)."""
    return subprocess.run([sys.executable, "-m", "twlv_jax", "plan", "--config", TINY, *argv],
                          capture_output=True, text=True)


@needs_libtpu
def test_tpu_topology_compiles_here_and_an_hbm_overflow_is_a_clear_failure():
    result = _plan_process("--target", "tpu:v5p:2x2x1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tpu:v5p:2x2x1: 4 devices, mesh data=1 fsdp=4" in result.stdout
    assert "of 97280.00" in result.stdout and "at 40% MFU of 459 TFLOP/s per device" in result.stdout
    assert "Error reading persistent compilation cache" not in result.stderr
    result = _plan_process("--target", "tpu:v5e:2x2", "--no_suggest", "--config.train.batch_size=65536")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("twlv plan: does not fit on tpu:v5e:2x2:")
    assert "RESOURCE_EXHAUSTED" in last or "HBM" in last


@pytest.mark.skipif(importlib.util.find_spec("jax_cuda12_plugin") is not None,
                    reason="the CUDA plugin is installed")
def test_gpu_target_without_the_cuda_plugin_says_what_to_install(capsys):
    code, _, err = _main(capsys, "--config", TINY, "--target", "gpu:h100:8")
    assert code == 2 and "GPU targets need jax-cuda12-plugin" in err
    assert os.environ["JAX_PLATFORMS"] == "cpu"
