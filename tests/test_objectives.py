"""Objective presets, config validation, targets and the optimizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from twlv_jax import config as cfglib
from twlv_jax.models import weights as weightlib
from twlv_jax.objectives import losses, presets
from twlv_jax.objectives.image_teacher import frames_to_tokens
from twlv_jax.objectives.targets.flow import patch_velocity
from twlv_jax.objectives.targets.latent import ema_momentum
from twlv_jax.objectives.targets.pixel import decoder_targets, pixel_targets
from twlv_jax.train import optim, validate

PRETRAIN = "configs/pretrain.py"


def tiny(*overrides, objective="twlv"):
    return cfglib.build(f"{PRETRAIN}:variant=tiny,objective={objective}",
                        [tuple(o.split("=", 1)) for o in overrides])


@pytest.mark.parametrize("preset,kind,ratio,targets", [
    ("twlv", "attention", 0.8, {"distill", "pixel", "latent"}),
    ("umt", "attention", 0.8, {"distill"}),
    ("videomae", "tube", 0.9, {"pixel"}),
    ("vjepa", "multiblock3d", 0.9, {"latent"}),
])
def test_presets(preset, kind, ratio, targets):
    o = presets.resolve(tiny(objective=preset).objective)
    assert (o.mask_kind, o.mask_ratio, set(o.weights)) == (kind, ratio, targets)


def test_explicit_settings_override_the_preset():
    o = presets.resolve(tiny("objective.pixel.weight=0", "objective.distill.weight=0.5",
                             "objective.mask.kind=tube").objective)
    assert o.weights == {"distill": 0.5, "latent": 1.0} and o.mask_kind == "tube"
    o = presets.resolve(tiny("objective.video_teacher.weight=2", objective="videomae").objective)
    assert o.weights == {"pixel": 1.0, "video_teacher": 2.0}


@pytest.mark.parametrize("overrides,message", [
    (["objective.preset=mae"], "unknown preset 'mae'"),
    (["objective.distill.weight=0", "objective.pixel.weight=0", "objective.latent.weight=0"],
     "all objective weights are zero"),
    (["objective.mask.kind=grid"], "unknown mask 'grid'"),
    (["objective.mask.ratio=1.0"], "leaves no visible tokens of 64"),
    (["objective.mask.ratio=0.0"], "masks no tokens of 64"),
    (["objective.mask.ratio=0.01", "objective.mask.kind=random"], "masks no tokens of 64"),
    (["teacher.image_size=48"], "gives a 6x6 grid but the student has 4x4: set teacher.image_size=32"),
    (["objective.distill.layers=3"], "objective.distill.layers must be between 1 and 2"),
    (["objective.video_teacher.weight=1"], "objective.video_teacher.variant must be one of"),
])
def test_bad_objectives_say_what_to_change(overrides, message):
    with pytest.raises(cfglib.ConfigError, match=message):
        validate.validate(tiny(*overrides), num_devices=8)


@pytest.mark.parametrize("overrides,message", [
    (["train.batch_size=12"], "train.batch_size=12 is not divisible by the data-parallel size 8"),
    (["mesh.shape=2,2,4"], "needs 16 devices, but 8 are available"),
    (["model.variant=XL"], r"model.variant: expected one of \['tiny'"),
    (["train.steps=10 weeks"], "train.steps: expected a duration like 1000"),
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["model.frames=9"], "model.frames=9 is not divisible by model.tubelet=2"),
    (["optim.b2=1.5"], r"optim.b1 and optim.b2 must be in \(0, 1\)"),
])
def test_validation_messages(overrides, message):
    with pytest.raises(cfglib.ConfigError, match=message):
        validate.validate(tiny(*overrides), num_devices=8)


def test_validation_reports_every_problem_at_once():
    with pytest.raises(cfglib.ConfigError) as e:
        validate.validate(tiny("optim.lr=0", "train.log_every=0", "mesh.rules=zero"), num_devices=8)
    text = str(e.value)
    assert "optim.lr" in text and "train.log_every" in text and "mesh.rules" in text


def test_valid_configs_pass():
    for preset in presets.PRESETS:
        if preset != "none":
            validate.validate(tiny(objective=preset), num_devices=8)
    validate.validate(cfglib.load(f"{PRETRAIN}:variant=L"), num_devices=256)


def test_random_teacher_policy():
    assert "RANDOMLY INITIALISED" in validate.teacher_warning(tiny())
    assert validate.teacher_warning(tiny(objective="videomae")) is None   # no image teacher
    big = cfglib.load(f"{PRETRAIN}:variant=B")
    with pytest.raises(cfglib.ConfigError, match=r"teacher.weights is empty.*allow_random=true"):
        validate.teacher_warning(big)
    big.teacher.allow_random = True
    banner = validate.teacher_warning(big)
    assert "RANDOMLY INITIALISED" in banner and "teacher.variant=clip_b16" in banner
    assert {len(line) for line in banner.splitlines()} == {78}   # a closed box
    big.teacher.weights = "/some/file.safetensors"
    assert validate.teacher_warning(big) is None


def test_total_steps_from_durations():
    c = tiny("train.steps=3ep", "optim.warmup=1000ex")
    assert validate.total_steps(c, examples_per_epoch=80) == (30, 30)   # warmup capped at the run
    c = tiny("train.steps=50", "optim.warmup=5")
    assert validate.total_steps(c, examples_per_epoch=None) == (50, 5)


def test_cosine_loss_and_layer_norm():
    a = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    assert float(losses.cosine_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.cosine_loss(a, -a)) == pytest.approx(4.0)
    assert float(losses.cosine_loss(a, a[::-1])) == pytest.approx(2.0)
    x = losses.layer_norm(jnp.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(x, [[-1.2247, 0.0, 1.2247]], atol=1e-3)


def test_pixel_targets_match_videomae_normalisation():
    video = jax.random.uniform(jax.random.key(0), (1, 2, 4, 4, 3))
    target = pixel_targets(video, 2, 2, normalize=True)              # (1, 4, 2*2*2*3)
    assert target.shape == (1, 4, 24)
    patch = np.asarray(video)[0, :, 0:2, 2:4].reshape(8, 3)          # token 1: rows 0-1, cols 2-3
    expected = (patch - patch.mean(0)) / (patch.std(0, ddof=1) + 1e-6)
    np.testing.assert_allclose(np.asarray(target)[0, 1].reshape(8, 3), expected, atol=1e-5)
    raw = pixel_targets(video, 2, 2, normalize=False)
    np.testing.assert_allclose(np.asarray(raw)[0, 1].reshape(8, 3), patch, atol=1e-6)


def test_decoder_masking_keeps_a_subset_of_masked_tokens():
    masked = jnp.tile(jnp.arange(10, 50)[None], (3, 1))
    subset = decoder_targets(jax.random.key(0), masked, 0.5)
    assert subset.shape == (3, 20)
    assert np.all(np.isin(subset, masked)) and np.all(np.diff(subset, axis=1) > 0)
    assert decoder_targets(jax.random.key(0), masked, 0.0) is masked


def test_frames_to_tokens_averages_each_tubelet():
    features = jnp.arange(2 * 4 * 3 * 1, dtype=jnp.float32).reshape(1, 2 * 4, 3, 1)   # (L, B*T, HW, P)
    tokens = frames_to_tokens(features, batch=2, tubelet=2)
    assert tokens.shape == (1, 2, 6, 1)
    np.testing.assert_allclose(tokens[0, 0, :3, 0], (features[0, 0, :, 0] + features[0, 1, :, 0]) / 2)


def test_ema_momentum_schedule():
    assert float(ema_momentum(0, 100, 0.998, 1.0)) == pytest.approx(0.998)
    assert float(ema_momentum(50, 100, 0.998, 1.0)) == pytest.approx(0.999)
    assert float(ema_momentum(500, 100, 0.998, 1.0)) == pytest.approx(1.0)


def test_optimizer_decay_mask_schedules_and_layer_decay():
    c = tiny("optim.lr=1e-3", "optim.lr_batch=4", "train.batch_size=8", "optim.weight_decay=0.1",
             "optim.weight_decay_end=0.01", "optim.layer_decay=0.5")
    params = {"student": {"blocks": {"blocks": {"mlp": {"fc1": {"kernel": jnp.ones((2, 3, 4)),
                                                                "bias": jnp.ones((2, 4))}}}},
                          "patch_embed": {"kernel": jnp.ones((5, 3))}},
              "pixel": {"decoder": {"mask_token": jnp.ones((1, 1, 3))}}}
    mask = optim.decay_mask(params)
    assert mask["student"]["blocks"]["blocks"]["mlp"]["fc1"] == {"kernel": True, "bias": False}
    assert mask["pixel"]["decoder"]["mask_token"] is False
    tx, lr = optim.make_optimizer(c.optim, params, batch_size=8, total_steps=100, warmup_steps=10,
                                  depth=2)
    assert float(lr(10)) == pytest.approx(2e-3)                       # scaled by 8 / 4
    assert float(lr(0)) == 0.0 and float(lr(100)) == pytest.approx(2e-3 * 0.01)
    scales = optim.layer_scales(params, depth=2, decay=0.5)
    np.testing.assert_allclose(scales["student"]["blocks"]["blocks"]["mlp"]["fc1"]["kernel"].ravel(),
                               [0.25, 0.5])
    assert float(scales["student"]["patch_embed"]["kernel"]) == 0.125
    # One step with zero gradients: only decayed kernels move, by lr * wd * layer scale.
    state = tx.init(params)
    for _ in range(11):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    kernel = updates["student"]["blocks"]["blocks"]["mlp"]["fc1"]["kernel"]
    wd = float(optim.wd_schedule(c.optim, 100)(10))
    np.testing.assert_allclose(kernel[0], -float(lr(10)) * wd * 0.25, rtol=1e-5)
    assert float(jnp.abs(updates["student"]["blocks"]["blocks"]["mlp"]["fc1"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["pixel"]["decoder"]["mask_token"]).max()) == 0.0


@pytest.mark.parametrize("max_norm", [0.5, 50.0])
def test_clip_by_global_norm_matches_optax(max_norm):
    import optax
    rng = np.random.default_rng(0)
    grads = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
    ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for key in grads:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)
    norm = float(optax.tree.norm(ours))
    assert norm == pytest.approx(min(max_norm, float(optax.tree.norm(grads))), rel=1e-6)


def test_weights_file_round_trip_and_strict_errors(tmp_path):
    params = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.float32)}
    path = str(tmp_path / "w.safetensors")
    weightlib.save(params, path)
    loaded = weightlib.load(path, params)
    np.testing.assert_array_equal(loaded["a"]["kernel"], params["a"]["kernel"])
    with pytest.raises(ValueError, match=r"missing \['c'\], unexpected \[\]"):
        weightlib.load(path, {**params, "c": np.ones(1)})
    with pytest.raises(ValueError, match=r"a.kernel has shape \(2, 3\), the model expects \(3, 2\)"):
        weightlib.load(path, {"a": {"kernel": np.ones((3, 2))}, "b": np.ones(2)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weightlib.load(str(tmp_path / "none.safetensors"), params)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        weightlib.load(str(tmp_path / "junk.safetensors"), params)


def translating_pattern(velocity: tuple[float, float], frames: int = 4, size: int = 32):
    """A smooth pattern moving `velocity` (x right, y down) pixels per frame, with a flat
    grey left half: float (1, frames, size, size, 3) in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    clip = []
    for t in range(frames):
        u, v = x - velocity[0] * t, y - velocity[1] * t
        pattern = 0.5 + 0.2 * np.sin(2 * np.pi * u / 16) * np.cos(2 * np.pi * v / 16)
        clip.append(np.where(x < size // 2, 0.5, pattern))
    return np.repeat(np.stack(clip)[None, ..., None], 3, axis=-1).astype(np.float32)


@pytest.mark.parametrize("velocity", [(0.5, 0.0), (0.0, -0.5), (-0.3, 0.4)])
def test_flow_target_is_each_patchs_velocity(velocity):
    # tubelet 4 (3 frame pairs per token), 8 x 8 patches over a 4 x 4 grid: the moving half's
    # tokens read the velocity, the flat half's read zero.
    clip = translating_pattern(velocity)
    v = np.asarray(patch_velocity(jnp.asarray(clip), 4, 8))                   # (1, 16, 6)
    assert v.shape == (1, 16, 6)
    v = v.reshape(4, 4, 3, 2)                                                 # (H', W', pairs, xy)
    np.testing.assert_allclose(v[:, 2:], np.broadcast_to(velocity, (4, 2, 3, 2)), atol=0.06)
    np.testing.assert_allclose(v[:, :2], 0.0, atol=1e-6)


def test_flow_target_needs_two_frames_per_tubelet():
    config = cfglib.build("configs/pretrain.py:variant=tiny",
                          [("objective.flow.weight", "1"), ("model.tubelet", "1")])
    assert ("objective.flow needs model.tubelet >= 2 (a velocity between a tubelet's frames), "
            "got 1") in presets.check(config)


def test_a_config_saved_before_a_target_existed_resolves_without_it():
    saved = cfglib.build(PRETRAIN + ":variant=tiny").to_dict()
    del saved["objective"]["flow"]                      # written before flow was registered
    objective = presets.resolve(ml_collections.ConfigDict(saved["objective"]))
    assert list(objective.weights) == ["distill", "pixel", "latent"]
