"""The demo's pieces: the label-free image teacher, the random-init baseline, the held-out
losses of the online probe, and `twlv demo` end to end on a tiny recipe."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import SUB_ENV
from flax import nnx

from twlv_jax import config as cfglib
from twlv_jax import demo, models
from twlv_jax.data.synthetic import SynthOptions, render_video
from twlv_jax.eval.encoder import random_encoder
from twlv_jax.models import weights as weightlib
from twlv_jax.parallel.mesh import make_mesh
from twlv_jax.train import state as statelib
from twlv_jax.train.teacher import info_nce, pretrain_image_teacher


def shape_clips(count: int, seed: int) -> np.ndarray:
    """uint8 (count, 8, 32, 32, 3) clips of the synthetic set's moving shapes."""
    rng = np.random.default_rng(seed)
    return np.stack([render_video(rng, i % 9, i % 8, frames=8, size=32, distractors=0,
                                  texture=0.0, grey=True) for i in range(count)])


def test_info_nce_is_log_batch_for_equal_embeddings_and_small_for_matching_ones():
    same = np.ones((4, 3), np.float32)
    assert np.isclose(float(info_nce(same, same, 0.1)), np.log(4), atol=1e-5)
    distinct = np.eye(4, dtype=np.float32)
    assert float(info_nce(distinct, distinct, 0.1)) < 1e-3


def test_teacher_pretraining_lowers_the_loss_and_loads_as_teacher_weights(tmp_path):
    params, losses = pretrain_image_teacher(shape_clips(48, 0), steps=60, batch_size=16,
                                            progress=False)
    assert len(losses) == 7 and losses[-1] < 0.8 * losses[0]
    path = str(tmp_path / "teacher.safetensors")
    weightlib.save(params, path)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: models.image_teacher("tiny"))))
    loaded = weightlib.load(path, abstract)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_random_encoder_is_the_student_that_training_starts_from():
    config = cfglib.build("configs/demo.py")
    setup = statelib.build(config, make_mesh("1,-1,1"), total_steps=10, warmup_steps=1)
    start = statelib.init_state(setup)["params"]["student"]
    encoder = random_encoder(config)
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(encoder.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    other = random_encoder(cfglib.build("configs/demo.py", [("seed", "1")]))
    kernel = lambda e: np.asarray(e.params["patch_embed"]["kernel"])
    assert not np.allclose(kernel(encoder), kernel(other))


def test_standardize_uses_the_train_statistics():
    train, val = np.array([[1.0, 10.0], [3.0, 30.0]]), np.array([[2.0, 50.0]])
    scaled_train, scaled_val = demo.standardize(train, val)
    np.testing.assert_allclose(scaled_train, [[-1, -1], [1, 1]], atol=1e-5)
    np.testing.assert_allclose(scaled_val, [[0, 3]], atol=1e-5)


TINY_RECIPE = """
import os
from twlv_jax.config import load_module

SYNTH = dict(train=24, val=16, frames=16, size=64, distractors=0, texture=0.0, noise=1.0,
             radius=0.2, travel=0.55, grey=True)
TEACHER = dict(variant="tiny", steps=3, batch_size=8, lr=1e-3, temperature=0.1, seed=1)
RUNS = {"twlv + flow": [], "pixel only": [("objective.distill.weight", "0"),
                                          ("objective.latent.weight", "0"),
                                          ("objective.flow.weight", "0")]}
PROBE_BATCH = 8

def get_config(arg=None):
    demo = load_module(os.path.join(REPO, "configs", "demo.py"))
    c = demo.get_config(arg)
    c.train.steps = 3
    c.train.ckpt_every = 3
    c.data.workers = 0
    return c
"""


def test_demo_end_to_end_on_a_tiny_recipe(tmp_path):
    """`twlv demo` as `make demo` runs it on a CPU: one process, one device. (On 8 simulated
    CPU devices XLA's CPU runtime can run this step's independent all-gathers in different
    orders on different devices and abort after its 40 s rendezvous timeout.)"""
    recipe = tmp_path / "recipe.py"
    recipe.write_text(f"REPO = {os.getcwd()!r}\n" + textwrap.dedent(TINY_RECIPE))
    workdir = tmp_path / "demo"
    env = dict(SUB_ENV, XLA_FLAGS="--xla_force_host_platform_device_count=1 "
               "--xla_backend_optimization_level=0")
    done = subprocess.run([sys.executable, "-m", "twlv_jax", "demo", "--workdir", str(workdir),
                           "--data", str(tmp_path / "data"), "--config", str(recipe)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    for row in ("image teacher, frame average", "image teacher at random init",
                "student at random init", "student: twlv + flow", "student: pixel only"):
        assert f"| {row} |" in printed
    assert "| twlv + flow | flow |" in printed and "| pixel only | pixel |" in printed
    assert "| pixel only | flow |" not in printed
    result = json.loads((workdir / "results.json").read_text())
    for scores in result["rows"].values():
        assert set(scores) == {"linear_appearance", "knn_appearance", "linear_motion",
                               "knn_motion"}
        assert all(0 <= v <= 1 for v in scores.values())
    assert set(result["held_out"]["twlv + flow"]) == {"distill", "pixel", "latent", "flow"}
    assert (workdir / "results.md").read_text().startswith("# twlv demo")
    assert len(list((workdir / "embeddings" / "val").glob("*.json"))) == 16
    assert (workdir / "teacher" / "teacher.safetensors").is_file()
    # The set is written once, and written anew for other options; other folders are refused.
    data = tmp_path / "data"
    first = (data / "videos" / "val" / "000000.mp4").stat().st_mtime_ns
    demo.write_data(str(data), SynthOptions(**{**json.loads(
        (data / "classes.json").read_text())["options"]}))
    assert (data / "videos" / "val" / "000000.mp4").stat().st_mtime_ns == first
    demo.write_data(str(data), SynthOptions(train=3, val=2, frames=8, size=32))
    assert len((data / "train.csv").read_text().splitlines()) == 4       # header + 3 rows
    assert not (data / "videos" / "train" / "000003.mp4").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no synthetic set"):
        demo.write_data(str(tmp_path / "other"), SynthOptions())
