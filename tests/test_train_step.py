"""The sharded train step on 8 simulated devices: equivalence, memory, and learning."""

import math

import jax
import numpy as np
import pytest

from twlv_jax import config as cfglib
from twlv_jax.parallel.mesh import make_mesh
from twlv_jax.train import flops
from twlv_jax.train import state as statelib
from twlv_jax.train import step as steplib
from twlv_jax.train.validate import validate

PRESETS = ["twlv", "umt", "videomae", "vjepa"]


def tiny(objective, *overrides):
    return cfglib.build(f"configs/pretrain.py:variant=tiny,objective={objective}",
                        [tuple(o.split("=", 1)) for o in overrides])


def moving_squares(n, frames=8, size=32, seed=0):
    """Clips of a bright square moving over a smooth, clip-specific background."""
    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    video = np.zeros((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        fy, fx = r.rand(2) * 0.5 + 0.1
        video[i] = (60 + 50 * np.sin(fy * yy + fx * xx))[..., None].astype(np.uint8)
        colour, (dy, dx), (y0, x0) = r.randint(128, 255, 3), r.randint(-2, 3, 2), r.randint(6, 20, 2)
        for f in range(frames):
            video[i, f][(abs(yy - y0 - dy * f) < 5) & (abs(xx - x0 - dx * f) < 5)] = colour
    return video


def setup_on(config, shape, devices, total_steps=100, warmup=10):
    mesh = make_mesh(shape, devices)
    setup = statelib.build(config, mesh, total_steps=total_steps, warmup_steps=warmup)
    return setup, statelib.init_state(setup), statelib.init_teachers(setup, {})


def relative_error(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-12))


@pytest.mark.parametrize("preset,shape,rules", [
    *[(p, "1,-1,1", "fsdp") for p in PRESETS], ("twlv", "2,2,2", "fsdp_tp"), ("vjepa", "-1,1,1", "dp"),
])
def test_sharded_loss_and_gradients_match_one_device(preset, shape, rules):
    config = tiny(preset, f"mesh.rules={rules}")
    video = moving_squares(8)
    results = []
    for devices, mesh_shape in ((jax.devices()[:1], "1,1,1"), (jax.devices(), shape)):
        setup, state, teachers = setup_on(config, mesh_shape, devices)
        loss, terms, grads = steplib.jit_grads(setup)(state, teachers, video)
        results.append((state["params"], loss, terms, grads))
    (p1, l1, t1, g1), (p8, l8, t8, g8) = results
    jax.tree.map(np.testing.assert_array_equal, p8, p1)          # sharded init is the same init
    assert relative_error(l8, l1) < 1e-5
    for name in t1:
        assert relative_error(t8[name], t1[name]) < 1e-5, name
    errors = jax.tree.map(relative_error, g8, g1)
    worst = max(jax.tree.leaves(errors))
    assert worst < 1e-5, worst
    assert g8["student"]["blocks"]["blocks"]["mlp"]["fc1"]["kernel"].sharding.spec != ()


@pytest.mark.parametrize("preset,microbatches", [("twlv", 2), ("videomae", 4), ("vjepa", 2)])
def test_microbatches_give_the_whole_batch_update(preset, microbatches):
    # 8 x M clips over 8 devices (fsdp): M sequential microbatches against one pass.
    video = moving_squares(8 * microbatches)
    results = []
    for count in (1, microbatches):
        config = tiny(preset, f"train.batch_size={8 * microbatches}", f"train.microbatches={count}")
        validate(config, num_devices=8)
        setup, state, teachers = setup_on(config, "1,-1,1", jax.devices())
        loss, terms, grads = steplib.jit_grads(setup)(state, teachers, video)
        new_state, _ = steplib.jit_train_step(setup)(state, teachers, video, np.float32(0))
        results.append((loss, terms, grads, new_state["params"]))
    (l1, t1, g1, p1), (lm, tm, gm, pm) = results
    assert relative_error(lm, l1) < 1e-5
    for name in t1:
        assert relative_error(tm[name], t1[name]) < 1e-5, name
    assert max(jax.tree.leaves(jax.tree.map(relative_error, gm, g1))) < 1e-4
    assert max(jax.tree.leaves(jax.tree.map(relative_error, pm, p1))) < 1e-5


def test_microbatches_must_divide_the_per_device_batch():
    with pytest.raises(cfglib.ConfigError, match=r"train.microbatches=3 does not divide the "
                       r"per-device batch 2 \(train.batch_size=16 over 8 data-parallel devices\)"):
        validate(tiny("videomae", "train.batch_size=16", "train.microbatches=3"), num_devices=8)


@pytest.mark.parametrize("target", ["pixel", "latent", "distill", "video_teacher", "flow"])
def test_analytic_flops_are_the_matmuls_xla_counts(target, monkeypatch):
    # flops.step_flops against XLA's cost analysis of the compiled step, each target alone.
    # Layers unrolled (cost analysis counts a scanned body once) and plain einsums. XLA also
    # counts elementwise work, norms, softmax and the optimizer, so its count is higher by a
    # bounded share; a target whose FLOPs were left out would be far outside it.
    monkeypatch.setenv("TWLV_CPU_KERNELS", "0")
    config = tiny("videomae", "objective.preset=none", "objective.mask.kind=tube",
                  "objective.mask.ratio=0.75",
                  f"objective.{target}.weight=1", "objective.video_teacher.variant=tiny",
                  "model.scan=false", "model.attention=xla", "train.batch_size=4")
    setup, state, teachers = setup_on(config, "1,1,1", jax.devices()[:1])
    step = steplib.jit_train_step(setup).lower(state, teachers, moving_squares(4), np.float32(0))
    cost = step.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ratio = cost["flops"] / flops.step_flops(config, setup.objective)
    assert 1.0 <= ratio < 1.3, ratio


def shard_bytes(tree, device):
    total = 0
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total


def abstract_shard_bytes(tree):
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_fsdp_per_device_bytes_are_an_eighth_of_the_total():
    # ViT-B with the full twlv objective, abstract (nothing allocated).
    config = cfglib.load("configs/pretrain.py:variant=B,objective=twlv")
    setup = statelib.build(config, make_mesh("1,-1,1"), total_steps=100, warmup_steps=10)
    trained = {k: setup.abstract_state[k] for k in ("params", "opt")}
    total = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(trained))
    per_device = abstract_shard_bytes(trained)
    assert abs(per_device / (total / 8) - 1) < 0.10, per_device / (total / 8)
    assert statelib.unsharded_check(setup, 0.05) < 0.01
    # Materialised tiny state: each device really holds the predicted shard bytes.
    setup, state, _ = setup_on(tiny("twlv"), "1,-1,1", jax.devices())
    for device in jax.devices():
        assert shard_bytes(state, device) == abstract_shard_bytes(setup.abstract_state)


def test_unsharded_check_names_the_largest_replicated_params():
    setup = statelib.build(tiny("umt"), make_mesh("1,-1,1"), total_steps=10, warmup_steps=1)
    with pytest.raises(ValueError, match=r"of parameter bytes are unsharded under mesh.rules='fsdp' "
                                         r"\(limit train.unsharded_limit=0%\); largest replicated: "):
        statelib.unsharded_check(setup, 0.0)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_overfits_a_fixed_batch(preset):
    config = tiny(preset, "optim.lr=3e-3", "optim.lr_batch=0", "optim.min_lr_ratio=1.0",
                  "train.batch_size=2", "mesh.shape=1,1,1")
    validate(config, num_devices=1)
    setup, state, teachers = setup_on(config, "1,1,1", jax.devices()[:1], total_steps=200, warmup=5)
    step = steplib.jit_train_step(setup)
    video = moving_squares(2)
    losses = []
    for _ in range(200):
        state, metrics = step(state, teachers, video, 0.0)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.5 * losses[0], (losses[0], losses[-10:])
    assert int(state["step"]) == 200
    for key in ("grad_norm", "param_norm", "update_norm", "lr"):
        assert np.isfinite(float(metrics[key])) and float(metrics[key]) > 0
    assert float(metrics["lr"]) == pytest.approx(3e-3)


def test_step_metrics_and_ema():
    setup, state, teachers = setup_on(tiny("twlv"), "1,-1,1", jax.devices(), total_steps=10, warmup=0)
    step = steplib.jit_train_step(setup)
    before = jax.tree.map(np.asarray, state["ema"])
    params_before = jax.tree.map(np.asarray, state["params"]["student"])
    all_before = jax.tree.map(np.asarray, state["params"])
    state, metrics = step(state, teachers, moving_squares(8), 0.0)
    change = jax.tree.map(lambda new, old: np.asarray(new, np.float64) - old, state["params"], all_before)
    assert float(metrics["update_norm"]) == pytest.approx(
        np.sqrt(sum(np.sum(np.square(c)) for c in jax.tree.leaves(change))), rel=1e-5)
    assert set(metrics) == {"loss", "loss/distill", "loss/pixel", "loss/latent", "grad_norm",
                            "param_norm", "update_norm", "lr", "ema_momentum"}
    m = float(metrics["ema_momentum"])
    assert m == pytest.approx(0.998)
    kernel = ("blocks", "blocks", "mlp", "fc1", "kernel")
    get = lambda tree: tree[kernel[0]][kernel[1]][kernel[2]][kernel[3]][kernel[4]]
    expected = m * get(before) + (1 - m) * np.asarray(get(state["params"]["student"]))
    np.testing.assert_allclose(get(state["ema"]), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(get(params_before), get(state["params"]["student"]))
    assert float(metrics["loss"]) == pytest.approx(
        sum(float(metrics[f"loss/{t}"]) for t in ("distill", "pixel", "latent")), rel=1e-6)


def test_teacher_weights_load_from_our_format_and_from_hugging_face_clip(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from twlv_jax.export import hf_clip
    from twlv_jax.models import weights as weightlib

    setup = statelib.build(tiny("umt"), make_mesh("1,-1,1"), total_steps=10, warmup_steps=1)
    torch.manual_seed(1)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
        image_size=32, projection_dim=32)).save_pretrained(tmp_path / "hf")
    hf_file = str(tmp_path / "hf" / "model.safetensors")
    loaded = statelib.init_teachers(setup, {"image_teacher": hf_file})["image_teacher"]
    expected = hf_clip.clip_params(hf_file, depth=2, heads=2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0), loaded, expected)
    assert loaded["blocks"]["blocks"]["attn"]["qkv"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp")
    ours = str(tmp_path / "teacher.safetensors")
    weightlib.save(loaded, ours)
    again = statelib.init_teachers(setup, {"image_teacher": ours})["image_teacher"]
    jax.tree.map(np.testing.assert_array_equal, again, loaded)
