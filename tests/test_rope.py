"""`model.pos_embed=rope3d`: V-JEPA 2's 3-D rotary positions in our encoder and heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twlv_jax import config as cfglib
from twlv_jax import models
from twlv_jax.models import rope
from twlv_jax.parallel.mesh import make_mesh
from twlv_jax.train import state as statelib
from twlv_jax.train import step as steplib
from twlv_jax.train.validate import validate


def encoder(**overrides):
    return models.encoder("tiny", frames=8, image_size=32, patch=8, pos_embed="rope3d",
                          **overrides)


def clip(seed=0):
    return jax.random.normal(jax.random.key(seed), (2, 8, 32, 32, 3))


def test_rotation_matches_vjepa2_rope_attention():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2RopeAttention

    # head width 40: 12 rotated channels per axis and 4 left as they are
    config = transformers.VJEPA2Config(crop_size=32, patch_size=8, frames_per_clip=6,
                                       hidden_size=80, num_attention_heads=2)
    attention = VJEPA2RopeAttention(config, 80, 2)
    assert rope.axis_dims(40) == 12
    x = torch.randn(2, 2, 48, 40, generator=torch.Generator().manual_seed(0))   # (B, H, N, Dh)
    table = rope.tables((3, 4, 4), 40)
    keep = np.array([[0, 5, 17, 40, 47], [3, 2, 1, 30, 16]])
    for index, rows in ((None, x), (keep, x[:, :, :5])):
        ids = attention.get_position_ids(torch.zeros(2, rows.shape[2], 80),
                                         masks=None if index is None else torch.from_numpy(index))
        expected = attention.apply_rotary_embeddings(rows, ids).numpy()
        ours = rope.rotate(jnp.asarray(rows.numpy().transpose(0, 2, 1, 3)),
                           rope.gather(table, None if index is None else jnp.asarray(index)))
        np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1, 3), expected,
                                   atol=1e-6, rtol=0)
        np.testing.assert_array_equal(expected[..., 36:], rows.numpy()[..., 36:])


def test_rope3d_encoder_positions_follow_the_kept_tokens():
    model = encoder()
    assert model.rope((4, 4, 4)).shape == (2, 1, 64, 32)
    video = clip()
    full = model(video)["tokens"]
    # the visible-token path with every token, in a shuffled order, gives the same tokens
    order = jnp.asarray(np.stack([np.random.default_rng(s).permutation(64) for s in (0, 1)]))
    shuffled = model(video, keep=order)["tokens"]
    np.testing.assert_allclose(shuffled, jnp.take_along_axis(full, order[..., None], axis=1),
                               atol=2e-6, rtol=0)
    # the positions matter: with the tubelets in reverse order the tokens are the same set,
    # which without positions would give the same mean embedding (sharper attention than
    # at init makes the difference clear)
    sharp = encoder()
    sharp.blocks.blocks.attn.qkv[...] = 20 * sharp.blocks.blocks.attn.qkv[...]
    reversed_tubelets = video.reshape(2, 4, 2, 32, 32, 3)[:, ::-1].reshape(video.shape)
    change = jnp.abs(sharp(reversed_tubelets)["pooled"] - sharp(video)["pooled"]).max()
    assert float(change) > 1e-2
    # other grids need no resampling; scan and remat give the same outputs
    assert model(clip()[:, :4, :16, :24])["tokens"].shape == (2, 2 * 2 * 3, 64)
    for kwargs in (dict(scan=False), dict(remat="full")):
        np.testing.assert_allclose(encoder(**kwargs)(video)["tokens"], full, atol=2e-6, rtol=0)


def test_rope3d_validates_and_trains_every_head():
    config = cfglib.build("configs/pretrain.py:variant=tiny,objective=twlv",
                          [("model.pos_embed", "rope3d")])
    validate(config, 1)
    bad = cfglib.build("configs/pretrain.py:variant=tiny", [("model.pos_embed", "rope4d")])
    with pytest.raises(cfglib.ConfigError, match=r"model.pos_embed: expected one of "
                       r"\['sincos3d', 'sincos1d', 'rope3d'\], got 'rope4d'"):
        validate(bad, 1)
    # distillation, the pixel decoder and the latent predictor (rotary too) all get gradients
    setup = statelib.build(config, make_mesh("1,1,1", jax.devices()[:1]), total_steps=10,
                           warmup_steps=1)
    state = statelib.init_state(setup)
    video = np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    loss, terms, grads = steplib.jit_grads(setup)(state, statelib.init_teachers(setup, {}), video)
    assert set(terms) >= {"distill", "pixel", "latent"} and np.isfinite(float(loss))
    for head in ("student", "pixel", "latent"):
        norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[head])]
        assert min(norms) >= 0 and max(norms) > 0, head
