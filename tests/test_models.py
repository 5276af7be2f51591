"""Encoder, heads and teachers: shapes, equivalences, parameter counts, sharding."""

import contextlib
import importlib.util
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from twlv_jax import models
from twlv_jax.models import cpu_kernels, posembed
from twlv_jax.models.heads import DistillHeads, MaskedPredictor
from twlv_jax.models.layers import Attention
from twlv_jax.models.vit import patchify
from twlv_jax.parallel import mesh as meshlib
from twlv_jax.parallel import sharding

TINY = dict(frames=8, image_size=32, patch=8, tubelet=2)


def clip(batch=2, frames=8, size=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, frames, size, size, 3))


def test_encoder_shapes_and_dtypes():
    enc = models.encoder("tiny", **TINY)
    out = enc(clip(), layers=(0, -1))
    assert out["tokens"].shape == (2, 64, 64) and out["tokens"].dtype == jnp.float32
    assert out["pooled"].shape == (2, 64)
    assert sorted(out["layers"]) == [0, 1]
    np.testing.assert_allclose(out["pooled"], out["tokens"].mean(1), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    enc32 = models.encoder("tiny", **TINY)
    enc16 = models.encoder("tiny", dtype="bfloat16", **TINY)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(enc16, nnx.Param)))
    out16, out32 = enc16(clip())["tokens"], enc32(clip())["tokens"]
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.1)
    assert not np.allclose(out16, out32, atol=1e-6)   # bf16 matmuls really ran


def test_visible_token_path_with_all_tokens_equals_full_forward():
    enc = models.encoder("tiny", **TINY)
    video = clip()
    full = enc(video)
    keep = jnp.tile(jnp.arange(enc.num_tokens)[None], (2, 1))
    np.testing.assert_allclose(enc(video, keep=keep)["tokens"], full["tokens"], atol=1e-5)
    # A permutation of the kept tokens permutes the outputs (no position leaks).
    perm = jax.random.permutation(jax.random.key(3), enc.num_tokens)
    out = enc(video, keep=jnp.tile(perm[None], (2, 1)))["tokens"]
    np.testing.assert_allclose(out, full["tokens"][:, perm], atol=1e-5)


def test_visible_subset_only_uses_those_tokens():
    enc = models.encoder("tiny", **TINY)
    video = clip()
    keep = jnp.array([[0, 5, 9, 33], [1, 2, 60, 63]])
    out = enc(video, keep=keep)
    assert out["tokens"].shape == (2, 4, 64)
    # Changing a pixel inside a dropped tubelet must not change anything.
    changed = video.at[:, 0:2, 0:8, 8:16].add(5.0)     # token 1 of sample 0 (dropped there)
    np.testing.assert_allclose(enc(changed, keep=keep)["tokens"][0], out["tokens"][0], atol=1e-6)


def test_patchify_order():
    video = jnp.arange(1 * 4 * 4 * 4 * 1).reshape(1, 4, 4, 4, 1)
    p = patchify(video, 2, 2)                        # (1, 2, 2, 2, 8)
    assert p.shape == (1, 2, 2, 2, 8)
    # token (t=0, h=0, w=1) holds frames 0-1, rows 0-1, cols 2-3, in (t, h, w) order
    np.testing.assert_array_equal(p[0, 0, 0, 1], [2, 3, 6, 7, 18, 19, 22, 23])


def test_scan_and_loop_give_the_same_outputs_and_gradients():
    scan = models.encoder("tiny", scan=True, **TINY)
    loop = models.encoder("tiny", scan=False, **TINY)
    remat = models.encoder("tiny", scan=True, remat="full", **TINY)
    video = clip()

    def loss(m):
        out = m(video, layers=(0,))
        return jnp.sum(out["tokens"] ** 2) + jnp.sum(out["layers"][0])

    values = [loss(m) for m in (scan, loop, remat)]
    grads = [nnx.grad(loss)(m) for m in (scan, loop, remat)]
    np.testing.assert_allclose(values[1], values[0], rtol=1e-6)
    np.testing.assert_allclose(values[2], values[0], rtol=1e-6)
    # Float32 sums in another order: on some CPUs (AMD EPYC) a few of the 24576 values of
    # a gradient differ by 1.2e-5 between the scanned and the unrolled layers.
    for g in grads[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5),
                     nnx.to_pure_dict(grads[0]), nnx.to_pure_dict(g))


def test_drop_path_is_random_in_training_and_off_without_rng():
    enc = models.encoder("tiny", drop_path=0.5, **TINY)
    video = clip()
    a = enc(video, rng=jax.random.key(1))["tokens"]
    b = enc(video, rng=jax.random.key(2))["tokens"]
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(enc(video)["tokens"], enc(video)["tokens"])


def test_attention_matches_reference_softmax():
    attn = Attention(16, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    q, k, v = attn.project_qkv(x)
    probs = jax.nn.softmax(jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(8), axis=-1)
    ref = jnp.einsum("bhqk,bkhe,hed->bqd", probs, v, attn.out[...]) + attn.out_bias[...]
    np.testing.assert_allclose(attn(x), ref, atol=1e-5)
    np.testing.assert_allclose(attn.cls_attention(x), probs[:, :, 0, 1:].mean(1), atol=1e-6)


def test_videomae_qv_bias_has_no_key_bias():
    enc = models.encoder("tiny", qkv_bias="qv", **TINY)
    attn = nnx.to_pure_dict(nnx.state(enc, nnx.Param))["blocks"]["blocks"]["attn"]
    assert set(attn) == {"qkv", "q_bias", "v_bias", "out", "out_bias"}
    with pytest.raises(ValueError, match="qkv_bias must be 'all', 'qv' or 'none'"):
        models.encoder("tiny", qkv_bias="k", **TINY)


def test_attentive_pooler():
    enc = models.encoder("tiny", pool="attentive", **TINY)
    out = enc(clip())
    assert out["pooled"].shape == (2, 64)
    assert not np.allclose(out["pooled"], out["tokens"].mean(1))


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="do not split into 2x16x16 tubelets"):
        models.encoder("tiny", frames=15)
    with pytest.raises(ValueError, match="unknown model size 'XL'"):
        models.encoder("XL")
    enc = models.encoder("tiny", **TINY)
    with pytest.raises(ValueError, match="video of 7 frames at 32x32 does not split"):
        enc(clip(frames=7))


def test_position_tables():
    table = posembed.sincos_3d(64, (4, 3, 3))
    assert table.shape == (4, 3, 3, 64)
    part = 2 * math.ceil(64 / 6)                      # 22 channels per axis
    np.testing.assert_array_equal(table[1, 0, 0, :part], table[1, 2, 2, :part])   # t part
    np.testing.assert_array_equal(table[0, 1, 0, part:2 * part], table[3, 1, 2, part:2 * part])
    vmae = posembed.videomae_sincos(8, (2, 2, 2))
    np.testing.assert_allclose(vmae[0, 0, 1, :2], [np.sin(1.0), np.cos(1.0)], rtol=1e-6)
    np.testing.assert_allclose(vmae[0, 0, 1, 2:4], [np.sin(1 / 10000 ** 0.25),
                                                    np.cos(1 / 10000 ** 0.25)], rtol=1e-6)


def test_position_resampling():
    table = jnp.asarray(posembed.sincos_3d(64, (4, 6, 6)))
    assert posembed.resample(table, (4, 6, 6)) is table
    # Linear interpolation reproduces a linear ramp exactly away from the borders.
    ramp = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 2, 2, 3))
    up = posembed.resample(ramp, (16, 2, 2))
    np.testing.assert_allclose(up[2:-2, 0, 0, 0], np.arange(2, 14) / 2 - 0.25, atol=1e-5)
    # An encoder trained at 8 frames / 32 px runs on 4 frames / 48 px with resampled positions.
    enc = models.encoder("tiny", **TINY)
    out = enc(clip(frames=4, size=48))
    assert out["tokens"].shape == (2, 2 * 6 * 6, 64)
    np.testing.assert_allclose(enc.pos_table((2, 6, 6)).reshape(2, 6, 6, 64),
                               posembed.resample(jnp.asarray(posembed.sincos_3d(64, (4, 4, 4))),
                                                 (2, 6, 6)), atol=1e-6)


def test_heads_shapes():
    rngs = nnx.Rngs(0)
    visible = jax.random.normal(jax.random.key(0), (2, 10, 64))
    keep = jnp.tile(jnp.arange(10)[None], (2, 1))
    targets = jnp.tile(jnp.arange(10, 64)[None], (2, 1))
    pixel = MaskedPredictor(64, 32, 1, 1, 2 * 8 * 8 * 3, (4, 4, 4), embed_bias=False, rngs=rngs)
    assert pixel(visible, keep, targets).shape == (2, 54, 384)
    latent = MaskedPredictor(64, 32, 2, 2, 64, (4, 4, 4), rngs=rngs)
    assert latent(visible, keep, targets).dtype == jnp.float32
    heads = DistillHeads(3, 64, 32, rngs=rngs)
    y = heads(jnp.stack([visible] * 3))
    assert y.shape == (3, 2, 10, 32)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)      # LayerNorm at init


def test_image_teacher_features():
    teacher = models.image_teacher("tiny")
    images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    out = teacher.features(images, num_layers=2)
    assert out["layers"].shape == (2, 3, 16, 32)
    assert out["embedding"].shape == (3, 32)
    attn = out["cls_attention"]
    assert attn.shape == (3, 16) and bool(jnp.all(attn > 0)) and bool(jnp.all(attn.sum(-1) < 1))
    # A resolution the teacher was not trained at uses resampled positions.
    assert teacher.features(jnp.zeros((1, 48, 48, 3)), 1)["layers"].shape == (1, 1, 36, 32)


def test_parameter_counts():
    counts = {name: models.count_params(nnx.eval_shape(lambda n=name: models.encoder(n)))
              for name in ("B", "L", "H")}
    assert counts["B"] == 86_236_416 and abs(counts["B"] / 86e6 - 1) < 0.01
    assert abs(counts["H"] / 632e6 - 1) < 0.01
    # The standard ViT-L the ViT paper labels "307M": 303.9M counted here (1.0% lower).
    assert counts["L"] == 303_885_312 and abs(counts["L"] / 307e6 - 1) < 0.0102
    assert models.count_params(nnx.eval_shape(lambda: models.image_teacher("clip_b16"))) == 86_192_640


def test_fsdp_mesh_shards_large_kernels_as_annotated():
    mesh = meshlib.make_mesh("1,-1,1")
    abstract = nnx.eval_shape(lambda: models.encoder("tiny", **TINY))
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(abstract, nnx.Param)))
    shardings = sharding.param_shardings(params, specs, mesh, "fsdp")
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(models.encoder("tiny", **TINY), nnx.Param)),
                   out_shardings=shardings)
    state = init()
    blocks = state["blocks"]["blocks"]
    shard_shape = lambda a: a.addressable_shards[0].data.shape
    assert shard_shape(blocks["mlp"]["fc1"]["kernel"]) == (2, 8, 256)        # (layers, embed/8, mlp)
    assert shard_shape(blocks["mlp"]["fc2"]["kernel"]) == (2, 256, 8)
    assert shard_shape(blocks["attn"]["qkv"]) == (2, 8, 3, 2, 32)
    assert shard_shape(blocks["attn"]["out"]) == (2, 2, 32, 8)
    assert shard_shape(state["patch_embed"]["kernel"]) == (384, 8)
    assert sharding.unsharded_fraction(params, shardings) < 0.02
    # fsdp_tp on a (1, 4, 2) mesh: mlp and heads over `tensor` as well.
    mesh_tp = meshlib.make_mesh("1,4,2")
    tp = sharding.param_shardings(params, specs, mesh_tp, "fsdp_tp")
    assert tp["blocks"]["blocks"]["mlp"]["fc1"]["kernel"].spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")
    assert tp["blocks"]["blocks"]["attn"]["qkv"].spec == jax.sharding.PartitionSpec(
        None, "fsdp", None, "tensor")


def test_indivisible_dimension_stays_replicated():
    mesh = meshlib.make_mesh("1,-1,1")
    spec = sharding.logical_to_spec(("embed", "mlp"), (12, 64), mesh, "fsdp")
    assert spec == jax.sharding.PartitionSpec()
    with pytest.raises(ValueError, match="unknown rules 'zero3'"):
        sharding.logical_to_spec(("embed",), (16,), mesh, "zero3")


def test_image_teacher_matches_hugging_face_clip(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from twlv_jax.export import hf_clip

    torch.manual_seed(0)
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
        image_size=32, projection_dim=32, attn_implementation="eager")).eval()
    hf.save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    assert hf_clip.is_hf_clip(path)
    teacher = models.image_teacher("tiny")
    params = hf_clip.clip_params(path, depth=2, heads=2)
    nnx.update(teacher, nnx.State(params))
    images = np.random.RandomState(0).randn(3, 32, 32, 3).astype(np.float32)
    with torch.no_grad():
        out = hf(torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True,
                 output_attentions=True)
        project = lambda h: hf.visual_projection(hf.vision_model.post_layernorm(h)).numpy()
        layers = np.stack([project(out.hidden_states[i])[:, 1:] for i in (1, 2)])
    ours = teacher.features(jnp.asarray(images), num_layers=2)
    np.testing.assert_allclose(ours["embedding"], out.image_embeds.numpy(), atol=2e-5)
    np.testing.assert_allclose(ours["layers"], layers, atol=2e-5)
    np.testing.assert_allclose(ours["cls_attention"], out.attentions[-1][:, :, 0, 1:].mean(1).numpy(),
                               atol=1e-6)
    with pytest.raises(ValueError, match="2 vision layers, the teacher variant has 12"):
        hf_clip.clip_params(path, depth=12, heads=12)


@pytest.mark.parametrize("tokens,heads", [(300, 2), (100, 3), (800, 2)])
def test_blockwise_attention_matches_xla_forward_and_gradients(tokens, heads):
    from twlv_jax.models.attention import blockwise_attention, plan, query_blocks

    assert query_blocks(300) == 2 and query_blocks(100) == 1 and query_blocks(1568) == 8
    assert plan(24, 160) == (24, 1) and plan(4, 300, 128) == (4, 4)
    assert plan(12, 1568, 784, one_head=True) == (1, 4) and plan(4, 800, 784, True) == (1, 2)
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, tokens, heads, 16))
    probe = jax.random.normal(jax.random.key(1), (2, tokens, heads, 16))

    def loss(attend, q, k, v):
        return jnp.sum(attend(q, k, v) * probe)

    reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    ref_grads = jax.grad(loss, argnums=(1, 2, 3))(reference, q, k, v)
    # All heads at once, one head at a time, and the CPU kernel (one head from 512 tokens).
    for attend in (lambda q, k, v: blockwise_attention(q, k, v, target=128),
                   lambda q, k, v: blockwise_attention(q, k, v, target=128, one_head=True),
                   cpu_kernels.attention):
        np.testing.assert_allclose(attend(q, k, v), reference(q, k, v), atol=1e-5)
        for ours, ref in zip(jax.grad(loss, argnums=(1, 2, 3))(attend, q, k, v), ref_grads):
            np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_bfloat16_matmul_runs_its_backward_in_bfloat16():
    from twlv_jax.models.layers import matmul

    x = jax.random.normal(jax.random.key(0), (4, 8, 16))
    w = jax.random.normal(jax.random.key(1), (16, 32))
    loss = lambda x, w: jnp.sum(matmul(x, w, "bnd,do->bno", jnp.bfloat16) ** 2)
    grads = jax.grad(loss, argnums=(0, 1))(x, w)
    reference = jax.grad(lambda x, w: jnp.sum(jnp.einsum("bnd,do->bno", x, w) ** 2), argnums=(0, 1))(x, w)
    for ours, ref in zip(grads, reference):
        assert ours.dtype == jnp.float32
        np.testing.assert_allclose(ours, ref, rtol=0.05, atol=0.5)
    dots = [eqn for eqn in _equations(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w).jaxpr)
            if eqn.primitive.name == "dot_general"]
    assert len(dots) == 3                 # the forward and both backward matmuls ...
    for eqn in dots:                      # ... take bfloat16 operands and give float32 results
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2
        assert eqn.outvars[0].aval.dtype == jnp.float32


@pytest.mark.parametrize("spec,x_shape,k_shape", [
    ("bnd,dkhe->bnkhe", (2, 5, 8), (8, 3, 2, 4)),      # qkv projection
    ("bnhe,hed->bnd", (2, 5, 2, 4), (2, 4, 8)),         # attention output
    ("lbnd,lde->lbne", (3, 2, 5, 8), (3, 8, 6)),        # per-layer heads: not one matrix
    ("...i,io->...o", (2, 5, 8), (8, 6)),               # Dense
])
@pytest.mark.parametrize("kernels", ["1", "0"])
def test_matmul_of_multi_axis_kernels_matches_einsum(spec, x_shape, k_shape, kernels, monkeypatch):
    """The CPU kernel (TWLV_CPU_KERNELS unset or 1) and the plain einsum (0) alike."""
    from twlv_jax.models.layers import matmul

    monkeypatch.setenv(cpu_kernels.ENV, kernels)
    assert cpu_kernels.enabled() == (kernels == "1")
    split = {"bnd,dkhe->bnkhe": 1, "bnhe,hed->bnd": 2, "...i,io->...o": 1}.get(spec)
    assert cpu_kernels._matrix_split(spec) == split
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), k_shape)
    probe = jax.random.normal(jax.random.key(2), jnp.einsum(spec, x, w).shape)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * probe)
    reference = lambda x, w: jnp.einsum(spec, x, w, precision="highest")
    ref_y, ref_grads = reference(x, w), jax.grad(loss(reference), (0, 1))(x, w)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 0.05)):
        ours = lambda x, w, dtype=dtype: matmul(x, w, spec, dtype)
        y = ours(x, w)
        assert y.shape == ref_y.shape and y.dtype == jnp.float32
        np.testing.assert_allclose(y, ref_y, rtol=tol, atol=tol * 5)
        for g, ref in zip(jax.grad(loss(ours), (0, 1))(x, w), ref_grads):
            np.testing.assert_allclose(g, ref, rtol=tol, atol=tol * 5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU layout of matrix products")
def test_cpu_matmul_flattens_rows_in_float32_on_one_device_only():
    """float32 products on one device take x as one (rows, C) matrix, so that the weight
    gradient contracts x's row axis in place; bfloat16 keeps the row axes (XLA transposes x for
    its bf16 kernel), and so do meshes of several devices (the rows carry the batch sharding)."""
    from twlv_jax.models.layers import matmul
    from twlv_jax.parallel.mesh import make_mesh
    from twlv_jax.parallel.sharding import use_rules

    x, w = jnp.ones((2, 5, 8)), jnp.ones((8, 3, 2, 4))
    one_device = contextlib.nullcontext()
    eight_devices = use_rules(make_mesh("1,-1,1", jax.devices()), "fsdp")
    for dtype, devices, x_rank in ((jnp.float32, one_device, 2), (jnp.bfloat16, one_device, 3),
                                   (jnp.float32, eight_devices, 3)):
        loss = lambda x, w, dtype=dtype: jnp.sum(matmul(x, w, "bnd,dkhe->bnkhe", dtype))
        with devices:
            jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr
        dots = [eqn for eqn in _equations(jaxpr) if eqn.primitive.name == "dot_general"]
        assert len(dots) == 3
        forward, _, weight_grad = dots                          # forward, d x, d kernel
        assert forward.invars[0].aval.shape[:-1] == ((10,) if x_rank == 2 else (2, 5))
        assert [v.aval.ndim for v in weight_grad.invars] == [x_rank, x_rank]
        assert weight_grad.outvars[0].aval.shape == (8, 24)


def test_encoder_gradients_are_the_same_with_and_without_cpu_kernels(monkeypatch):
    """On CPUs the model takes the CPU kernels (custom gradients, blockwise attention); with
    TWLV_CPU_KERNELS=0 the plain einsum and XLA attention; both give the same forward and
    gradients."""
    enc = models.encoder("tiny", **TINY)
    graphdef, params = nnx.split(enc, nnx.Param)
    video, keep = clip(), jnp.tile(jnp.arange(0, 64, 2)[None], (2, 1))

    def loss(params):
        out = nnx.merge(graphdef, params)(video, keep=keep)
        return jnp.sum(out["tokens"] * jnp.cos(out["tokens"]))

    results = {}
    for kernels in ("1", "0"):
        monkeypatch.setenv(cpu_kernels.ENV, kernels)
        jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
        custom = {e.primitive.name for e in _equations(jaxpr)} & {"custom_vjp_call", "custom_vjp_call_jaxpr"}
        assert bool(custom) == (kernels == "1")
        results[kernels] = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(results["1"][0], results["0"][0], rtol=1e-5)
    for ours, plain in zip(jax.tree.leaves(results["1"][1]), jax.tree.leaves(results["0"][1])):
        np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="TPU targets need libtpu")
def test_accelerator_targets_never_take_the_cpu_kernels():
    """The twlv train step lowered for a TPU topology from this CPU-only process (as `twlv plan`
    does) traces no op through the CPU kernels or the blockwise attention that 'auto' picks on
    CPUs; lowered for the simulated CPU devices, it does. In a process of its own, as `twlv plan`
    runs, without libtpu's one-process lock (no chip is opened)."""
    script = """if True:
        from twlv_jax import config as cfglib
        from twlv_jax.plan import targets
        from twlv_jax.plan.compile import prepare
        from twlv_jax.train import step as steplib
        config = cfglib.build("configs/pretrain.py:variant=tiny,objective=twlv", [])
        for name in ("tpu:v5p:2x2x1", "cpu:4"):
            setup, video, _ = prepare(config, targets.devices(targets.parse(name)))
            lowered = steplib.jit_train_step(setup).lower(setup.abstract_state,
                                                          setup.abstract_teachers, video, 0.0)
            text = lowered.as_text(debug_info=True)
            print(name, *(text.count(key) for key in ("cpu_kernels.py", "models/attention.py",
                                                      "optimization_barrier", "dot_general")))
    """
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    counts = {line.split()[0]: [int(n) for n in line.split()[1:]]
              for line in result.stdout.splitlines()}
    tpu, cpu = counts["tpu:v5p:2x2x1"], counts["cpu:4"]
    assert tpu[:3] == [0, 0, 0] and tpu[3] > 0
    assert min(cpu) > 0


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)
