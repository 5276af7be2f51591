"""Test set-up: 8 simulated CPU devices and parsed absl flags, before JAX or Grain import."""

import json
import os
import tempfile
import time

# Optimisation level 0 of the CPU backend halves XLA compile times, which dominate the
# suite; the HLO (and so the arithmetic) is the same, the machine code is less tuned.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# Many tests (and the training processes they start) compile the same programs: a
# persistent compilation cache shared by all of them compiles each only once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"twlv-test-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.

# Subprocesses get 2 simulated devices: enough for a sharded mesh, quicker to compile.
SUB_ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
               "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def train_tiny(data, workdir, *overrides: tuple[str, str]) -> str:
    """A tiny videomae student trained for 2 steps on `data`/train.csv, written to `workdir`."""
    from twlv_jax import config as cfglib
    from twlv_jax.train import loop
    config = cfglib.build("configs/pretrain.py:variant=tiny,objective=videomae", [
        ("data.path", str(data / "train.csv")), ("data.workers", "0"),
        ("train.batch_size", "8"), ("train.steps", "2"), ("train.ckpt_every", "2"),
        ("train.log_every", "1"), *overrides])
    loop.run(config, str(workdir))
    return str(workdir)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny checkpoint after 2 steps, and the synthetic videos (24 train, 8 val) it read."""
    from twlv_jax.data.synthetic import SynthOptions, write_synthetic
    root = tmp_path_factory.mktemp("trained")
    videos = root / "videos"
    write_synthetic(str(videos), SynthOptions(train=24, val=8, frames=16, size=32))
    return train_tiny(videos, root / "run"), videos


def wait_for_step(metrics: str, step: int, process, timeout: float) -> None:
    """Waits until the run's `metrics` file logs `step` (or later); fails if `process` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        if os.path.isfile(metrics):
            with open(metrics) as f:
                steps = [json.loads(line)["step"] for line in f if line.strip()]
            if steps and steps[-1] >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached in {metrics}")
