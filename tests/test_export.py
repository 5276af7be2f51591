"""Weights in and out: real transformers models (random init, offline), a real tiny checkpoint."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import train_tiny  # noqa: E402

from twlv_jax.data.synthetic import SynthOptions, write_synthetic  # noqa: E402
from twlv_jax.eval.encoder import abstract_student, load_encoder  # noqa: E402
from twlv_jax.export import (  # noqa: E402
    export_cli,
    files,
    hf_clip,
    import_cli,
    parity,
    student,
    videomae,
    vjepa2,
)
from twlv_jax.export.table import ConversionError, export_params, import_params  # noqa: E402
from twlv_jax.models import weights as weightlib  # noqa: E402
from twlv_jax.train import checkpoint as ckptlib  # noqa: E402

TINY_HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
               image_size=32, patch_size=8, num_frames=8, tubelet_size=2, layer_norm_eps=1e-6,
               decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
               decoder_intermediate_size=64, use_mean_pooling=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(str(root), SynthOptions(train=8, val=2, frames=24, size=32))
    return root


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A tiny student in VideoMAE's layout (1-D positions, q/v biases), trained 2 steps."""
    return train_tiny(data, tmp_path_factory.mktemp("run"), ("model.pos_embed", "sincos1d"),
                      ("model.qkv_bias", "qv"))


@pytest.fixture(scope="module")
def custom_checkpoint(tmp_path_factory):
    """A tiny student VideoMAEModel cannot express (3-D positions, LayerScale, key bias)."""
    config = student.make_config("tiny", dict(pos_embed="sincos3d", qkv_bias="all", layerscale=0.5))
    rng = np.random.default_rng(0)
    params = {k: v + 0.05 * rng.standard_normal(v.shape, np.float32)
              for k, v in student.fresh(config).items()}
    folder = str(tmp_path_factory.mktemp("custom"))
    student.write(folder, config, params, source="test")
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint, data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf") / "videomae")
    assert export_cli.main(["hf", "--checkpoint", checkpoint, "--output", out,
                            "--input", str(data / "val.csv")]) == 0
    return out


def clips(count=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 8, 32, 32, 3), dtype=np.uint8)


def hf_tokens(model, video):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(parity.normalized(video))).last_hidden_state.numpy()


def test_export_videomae_form_loads_with_no_key_problems_and_matches(exported, checkpoint):
    with open(os.path.join(exported, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ["VideoMAEModel"] and not config["use_mean_pooling"]
    assert config["layer_norm_eps"] == 1e-6 and "auto_map" not in config
    model, info = transformers.VideoMAEModel.from_pretrained(exported, output_loading_info=True)
    assert not any(info.values()), info
    video = clips()
    ours = load_encoder(checkpoint)(video, tokens=True)
    np.testing.assert_allclose(hf_tokens(model.eval(), video), ours["tokens"], atol=1e-5, rtol=0)
    with open(os.path.join(exported, "parity.json")) as f:
        report = json.load(f)
    assert report["passed"] and report["form"] == "videomae"
    assert report["clips"].startswith("2 clips decoded from") and report["max_abs_diff_tokens"] < 1e-5
    with open(os.path.join(exported, "preprocessing.json")) as f:
        spec = json.load(f)
    assert (spec["frames"], spec["image_size"], spec["mean"]) == (8, 32, [0.485, 0.456, 0.406])


def test_ours_to_hf_to_ours_is_bit_identical(exported, checkpoint, tmp_path, capsys):
    back = str(tmp_path / "back")
    assert import_cli.main(["videomae", "--input", exported, "--output", back]) == 0
    assert "parity PASS" in capsys.readouterr().out
    original = jax.device_get(load_encoder(checkpoint).params)
    again = jax.device_get(load_encoder(back).params)
    jax.tree.map(np.testing.assert_array_equal, again, original)


def test_custom_form_when_videomae_cannot_express_it(custom_checkpoint, tmp_path, capsys):
    refused = str(tmp_path / "refused")
    assert export_cli.main(["hf", "--checkpoint", custom_checkpoint, "--output", refused,
                            "--form", "videomae"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twlv export: VideoMAEModel cannot compute what this encoder computes: "
                          "pos_embed=sincos3d") and err.count("\n") == 1
    assert not os.path.exists(refused)
    out = str(tmp_path / "custom")
    assert export_cli.main(["hf", "--checkpoint", custom_checkpoint, "--output", out]) == 0
    assert "form: custom: VideoMAEModel cannot express it" in capsys.readouterr().out
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] != "videomae" and "auto_map" in config
    assert sorted(os.listdir(out)) == ["config.json", "configuration_twlv.py", "model.safetensors",
                                       "modeling_twlv.py", "parity.json", "preprocessing.json"]
    model, info = transformers.AutoModel.from_pretrained(out, trust_remote_code=True,
                                                         output_loading_info=True)
    assert not any(info.values()), info
    video = clips(seed=1)
    ours = load_encoder(custom_checkpoint)(video, tokens=True)
    with torch.no_grad():
        result = model.eval()(pixel_values=torch.from_numpy(parity.normalized(video)))
    np.testing.assert_allclose(result.last_hidden_state.numpy(), ours["tokens"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.pooler_output.numpy(), ours["pooled"], atol=1e-5, rtol=0)


def test_torch_and_npz_state_dicts(custom_checkpoint, tmp_path):
    for kind, name in (("torch", "enc.safetensors"), ("npz", "enc.npz")):
        out = str(tmp_path / name)
        assert export_cli.main([kind, "--checkpoint", custom_checkpoint, "--output", out]) == 0
        state = files.read_state(out) if kind == "torch" else dict(np.load(out))
        assert state["blocks.1.attn.qkv.weight"].shape == (192, 64)
        assert state["patch_embed.proj.weight"].shape == (64, 3, 2, 8, 8)
        assert state["blocks.0.gamma_1"].shape == (64,) and "blocks.0.attn.qkv.bias" in state
        with open(os.path.splitext(out)[0] + ".parity.json") as f:
            assert json.load(f)["passed"]


def random_videomae(folder, *, seed=0, **overrides):
    """A VideoMAEForPreTraining at random init, every parameter perturbed (biases too)."""
    torch.manual_seed(seed)
    model = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**{**TINY_HF, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def test_import_videomae_reproduces_hugging_face(tmp_path):
    hf_model = random_videomae(tmp_path / "hf")
    out = str(tmp_path / "imported")
    assert import_cli.main(["videomae", "--input", str(tmp_path / "hf"), "--output", out]) == 0
    with open(os.path.join(out, "import_report.json")) as f:
        report = json.load(f)
    assert report["ignored"][0].startswith("21 keys of pretraining/classification heads")
    assert report["parity"]["passed"] and not report["missing"]
    video = clips(seed=2)
    ours = load_encoder(out)(video, tokens=True)
    np.testing.assert_allclose(ours["tokens"], hf_tokens(hf_model.videomae, video), atol=1e-5, rtol=0)
    # init_from reads the student of the imported checkpoint strictly
    config = student.make_config("tiny", dict(pos_embed="sincos1d", qkv_bias="qv"))
    _, abstract, _ = abstract_student(config)
    _, lines = ckptlib.load_params(out, {"student": abstract})
    assert lines[0].startswith("loaded 17 of 17 parameter arrays")
    with open(os.path.join(out, "checkpoints", "0", "meta", "metadata")) as f:
        assert json.load(f)["format_version"] == ckptlib.FORMAT_VERSION   # not read as format 1


def test_import_videomae_pretraining_decoder_into_our_pixel_decoder(tmp_path):
    from flax import nnx

    from twlv_jax.data.transforms import normalize
    from twlv_jax.objectives.hybrid import Pretrainer
    from twlv_jax.objectives.presets import resolve

    hf_model = random_videomae(tmp_path / "hf", seed=11, decoder_hidden_size=64,
                               decoder_num_attention_heads=1, decoder_intermediate_size=256,
                               decoder_num_hidden_layers=2)
    out = str(tmp_path / "imported")
    assert import_cli.main(["videomae", "--input", str(tmp_path / "hf"), "--output", out]) == 0
    with open(os.path.join(out, "import_report.json")) as f:
        report = json.load(f)
    assert not report["ignored"] and report["loaded"] == 34 + 36
    assert any(n.startswith("mapped: encoder_to_decoder, mask_token, decoder.* -> "
                            "params.pixel.decoder (decoder_width=64, decoder_depth=2")
               for n in report["notes"])
    # a videomae run with this decoder loads student and decoder strictly (init_from)
    config = load_encoder(out).config
    assert (config.objective.preset, config.objective.pixel.decoder_width) == ("videomae", 64)
    model = nnx.eval_shape(lambda: Pretrainer(config, resolve(config.objective), rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    params, lines = ckptlib.load_params(out, nnx.to_pure_dict(abstract))
    assert lines[0].startswith("loaded 35 of 35 parameter arrays")
    model = nnx.merge(graphdef, params)
    # its reconstructions are VideoMAEForPreTraining's (whose decoder.norm has eps 1e-5, not 1e-6)
    hf_model.decoder.norm.eps = 1e-6
    video = clips(seed=12)
    masked_bool = np.zeros((2, 64), bool)
    masked_bool[0, ::2] = masked_bool[1, 5:37] = True
    keep = jax.numpy.asarray(np.stack([np.flatnonzero(~m) for m in masked_bool]))
    masked = jax.numpy.asarray(np.stack([np.flatnonzero(m) for m in masked_bool]))
    tokens = model.student(normalize(video), keep=keep)["tokens"]
    ours = model.pixel.decoder(tokens, keep, masked)
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(parity.normalized(video)),
                          bool_masked_pos=torch.from_numpy(masked_bool)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_import_accepts_old_q_bias_names(tmp_path):
    random_videomae(tmp_path / "hf", seed=3)
    state = files.read_state(str(tmp_path / "hf"))
    old = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
           for k, v in state.items()}
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in old
    config = student.make_config("tiny", dict(pos_embed="sincos1d", qkv_bias="qv"))
    like = student.fresh(config)
    rules = videomae.rules(config.model, set(like))
    new_params, _ = import_params(videomae.normalize_keys(state), rules, like, source="new",
                                  ignore=videomae.IGNORE)
    old_params, _ = import_params(videomae.normalize_keys(old), rules, like, source="old",
                                  ignore=videomae.IGNORE)
    for name in new_params:
        np.testing.assert_array_equal(old_params[name], new_params[name])


def test_strict_import_names_missing_unexpected_and_misshaped_keys(tmp_path, capsys):
    config = student.make_config("tiny", dict(pos_embed="sincos1d", qkv_bias="qv"))
    like = student.fresh(config)
    rules = videomae.rules(config.model, set(like))
    good = export_params(like, rules)
    cases = [
        ({k: v for k, v in good.items() if k != "encoder.layer.1.output.dense.weight"},
         "missing encoder.layer.1.output.dense.weight (64, 256)"),
        ({**good, "encoder.layer.0.attention.attention.key.bias": np.zeros(64, np.float32)},
         "unexpected encoder.layer.0.attention.attention.key.bias"),
        ({**good, "layernorm.weight": np.ones(32, np.float32)},
         "layernorm.weight has shape (32,), expected (64,)"),
    ]
    for state, message in cases:
        with pytest.raises(ConversionError, match=r"1 key problem\(s\): " + message.replace(
                "(", r"\(").replace(")", r"\)")):
            import_params(state, rules, like, source="sd")
    state = cases[0][0]
    params, report = import_params(state, rules, like, source="sd", allow=["encoder.layer.1.output.*"])
    assert report.allowed == ["encoder.layer.1.output.dense.weight (64, 256)"]
    np.testing.assert_array_equal(params["blocks.blocks.mlp.fc2.kernel"][1],
                                  like["blocks.blocks.mlp.fc2.kernel"][1])
    # through the command line: one line, exit 2, nothing written
    random_videomae(tmp_path / "hf", seed=4, layer_norm_eps=1e-12)
    src = files.read_state(str(tmp_path / "hf"))
    del src["videomae.layernorm.bias"]
    save_file(src, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    out = str(tmp_path / "never")
    capsys.readouterr()
    assert import_cli.main(["videomae", "--input", str(tmp_path / "hf"), "--output", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twlv import: ") and "missing layernorm.bias (64,)" in err
    assert err.count("\n") == 1 and not os.path.exists(out)


TINY_VJEPA2 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4.0,
                   crop_size=32, patch_size=8, frames_per_clip=8, tubelet_size=2,
                   pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=2,
                   pred_num_mask_tokens=2)


@pytest.fixture(scope="module")
def hf_vjepa2(tmp_path_factory):
    """A VJEPA2Model folder at random init, every parameter perturbed (biases too)."""
    folder = tmp_path_factory.mktemp("vjepa2") / "hf"
    torch.manual_seed(5)
    model = transformers.VJEPA2Model(transformers.VJEPA2Config(**TINY_VJEPA2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return str(folder), model.eval()


@pytest.fixture(scope="module")
def imported_vjepa2(hf_vjepa2, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vjepa2") / "imported")
    assert import_cli.main(["vjepa2", "--input", hf_vjepa2[0], "--output", out]) == 0
    return out


def vjepa2_tokens(model, video):
    with torch.no_grad():
        return model(pixel_values_videos=torch.from_numpy(parity.normalized(video)),
                     skip_predictor=True).last_hidden_state.numpy()


def test_import_vjepa2_reproduces_hugging_face(hf_vjepa2, imported_vjepa2):
    folder, hf_model = hf_vjepa2
    with open(os.path.join(imported_vjepa2, "import_report.json")) as f:
        report = json.load(f)
    assert report["parity"]["passed"] and report["parity"]["form"] == "vjepa2"
    assert report["ignored"] == ["23 keys of pretraining/classification heads (predictor)"]
    assert any("pos_embed=rope3d" in note for note in report["notes"])
    encoder = load_encoder(imported_vjepa2)
    assert (encoder.config.model.pos_embed, encoder.config.model.qkv_bias) == ("rope3d", "all")
    # at the config's size, and with fewer frames (rotary positions need no table)
    for video in (clips(seed=6), clips(seed=7)[:, :4]):
        np.testing.assert_allclose(encoder(video, tokens=True)["tokens"],
                                   vjepa2_tokens(hf_model, video), atol=1e-5, rtol=0)
    # the table works both ways: theirs -> ours -> theirs gives the same arrays
    config, params = student.read(imported_vjepa2)
    back = export_params(params, vjepa2.rules(config.model, set(params)))
    state = files.read_state(folder)
    assert sorted(back) == sorted(k for k in state if k.startswith("encoder."))
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key])
    # init_from reads the student strictly
    _, abstract, _ = abstract_student(config)
    _, lines = ckptlib.load_params(imported_vjepa2, {"student": abstract})
    assert lines[0].startswith("loaded 16 of 16 parameter arrays")


def test_rope3d_exports_as_the_custom_model(imported_vjepa2, hf_vjepa2, tmp_path, capsys):
    out = str(tmp_path / "custom")
    assert export_cli.main(["hf", "--checkpoint", imported_vjepa2, "--output", out]) == 0
    assert ("form: custom: VideoMAEModel cannot express it: pos_embed=rope3d"
            in capsys.readouterr().out)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["pos_embed"] == "rope3d"
    model, info = transformers.AutoModel.from_pretrained(out, trust_remote_code=True,
                                                         output_loading_info=True)
    assert not any(info.values()), info
    encoder = load_encoder(imported_vjepa2)
    # the custom model computes what ours computes, at the config's size and at another
    for video in (clips(seed=8), np.random.default_rng(9).integers(0, 256, (1, 4, 16, 24, 3),
                                                                   dtype=np.uint8)):
        ours = encoder(video, tokens=True)
        with torch.no_grad():
            result = model.eval()(pixel_values=torch.from_numpy(parity.normalized(video)))
        np.testing.assert_allclose(result.last_hidden_state.numpy(), ours["tokens"], atol=1e-5,
                                   rtol=0)
        np.testing.assert_allclose(result.pooler_output.numpy(), ours["pooled"], atol=1e-5, rtol=0)
    # and so what V-JEPA 2 computes
    video = clips(seed=10)
    with torch.no_grad():
        tokens = model(pixel_values=torch.from_numpy(parity.normalized(video))).last_hidden_state
    np.testing.assert_allclose(tokens.numpy(), vjepa2_tokens(hf_vjepa2[1], video), atol=1e-5, rtol=0)


def test_import_clip_into_the_image_teacher(tmp_path):
    from flax import nnx

    from twlv_jax import models

    torch.manual_seed(0)
    kwargs = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2,
                  patch_size=8, projection_dim=32)
    hf = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        image_size=32, **kwargs)).eval()
    hf.save_pretrained(tmp_path / "same")
    out = str(tmp_path / "teacher.safetensors")
    assert import_cli.main(["clip", "--input", str(tmp_path / "same"), "--output", out,
                            "--variant", "tiny"]) == 0
    teacher = models.image_teacher("tiny")
    nnx.update(teacher, nnx.State(weightlib.load(out, nnx.to_pure_dict(nnx.state(teacher)))))
    images = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    with torch.no_grad():
        expected = hf(torch.from_numpy(images.transpose(0, 3, 1, 2))).image_embeds.numpy()
    ours = teacher.features(jax.numpy.asarray(images), num_layers=1)["embedding"]
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    # a CLIP at another resolution: its position table is resampled, and the report says so
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        image_size=64, **kwargs)).save_pretrained(tmp_path / "big")
    _, report = hf_clip.import_clip(str(tmp_path / "big" / "model.safetensors"), "tiny")
    assert report.resampled == ["vision_model.embeddings.position_embedding.weight (65, 48) -> (17, 48)"]


def test_export_errors_are_one_line(tmp_path, capsys):
    assert export_cli.main(["hf", "--checkpoint", str(tmp_path / "nothing"), "--output",
                            str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twlv export: checkpoint ") and err.count("\n") == 1
    assert export_cli.main(["npz", "--checkpoint", str(tmp_path), "--output", "x.bin"]) == 2
    assert "needs a .npz file name" in capsys.readouterr().err


def jepa_sincos(dim, side, depth, uniform_power=True):
    """V-JEPA's get_3d_sincos_pos_embed (src/models/utils/pos_embs.py), rewritten: (N, dim)."""
    grid_h, grid_d, grid_w = np.meshgrid(np.arange(side, dtype=float), np.arange(depth, dtype=float),
                                         np.arange(side, dtype=float))
    dims = (3 * [int(np.ceil(dim / 6) * 2)] if uniform_power else [dim // 2, dim // 4, dim // 4])

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one(d, g) for d, g in zip(dims, (grid_d, grid_h, grid_w), strict=True)], 1)
    return table[:, :dim].astype(np.float32)


def timm_blocks(rng, prefix, depth, dim, mlp, qkv_bias):
    """The block keys and shapes of V-JEPA's / UMT's (VideoMAE's) `Block`, random values."""
    def r(*shape):
        return torch.from_numpy(0.05 * rng.standard_normal(shape).astype(np.float32))

    state = {}
    for i in range(depth):
        b = f"{prefix}{i}."
        state.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                      b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.proj.weight": r(dim, dim),
                      b + "attn.proj.bias": r(dim), b + "norm2.weight": 1 + r(dim),
                      b + "norm2.bias": r(dim), b + "mlp.fc1.weight": r(mlp, dim),
                      b + "mlp.fc1.bias": r(mlp), b + "mlp.fc2.weight": r(dim, mlp),
                      b + "mlp.fc2.bias": r(dim)})
        if qkv_bias == "all":
            state[b + "attn.qkv.bias"] = r(3 * dim)
        else:
            state.update({b + "attn.q_bias": r(dim), b + "attn.v_bias": r(dim)})
    return state


def jepa_encoder(seed, *, uniform_power=True):
    """V-JEPA's VisionTransformer (vision_transformer.py) state: tiny widths, a (4, 4, 4) grid."""
    rng = np.random.default_rng(seed)
    state = {"patch_embed.proj.weight": torch.from_numpy(0.05 * rng.standard_normal(
                 (64, 3, 2, 8, 8)).astype(np.float32)),
             "patch_embed.proj.bias": torch.zeros(64) + 0.01,
             "pos_embed": torch.from_numpy(jepa_sincos(64, 4, 4, uniform_power))[None],
             "norm.weight": torch.ones(64) * 1.1, "norm.bias": torch.zeros(64) - 0.02,
             **timm_blocks(rng, "blocks.", 2, 64, 256, "all")}
    return {f"module.backbone.{k}": v for k, v in state.items()}


def jepa_predictor(seed, width=32):
    """V-JEPA's VisionTransformerPredictor state (predictor.py), use_mask_tokens with 2 tokens."""
    rng = np.random.default_rng(seed)
    state = {"predictor_embed.weight": torch.from_numpy(0.05 * rng.standard_normal(
                 (width, 64)).astype(np.float32)),
             "predictor_embed.bias": torch.zeros(width) + 0.03,
             "mask_tokens.0": torch.zeros(1, 1, width), "mask_tokens.1": torch.ones(1, 1, width),
             "predictor_pos_embed": torch.from_numpy(jepa_sincos(width, 4, 4))[None],
             "predictor_norm.weight": torch.ones(width), "predictor_norm.bias": torch.zeros(width),
             "predictor_proj.weight": torch.from_numpy(0.05 * rng.standard_normal(
                 (64, width)).astype(np.float32)),
             "predictor_proj.bias": torch.zeros(64),
             **timm_blocks(rng, "predictor_blocks.", 1, width, 4 * width, "all")}
    return {f"module.backbone.{k}": v for k, v in state.items()}


def reference_tokens(state, video, **fields):
    """Tokens of a PyTorch module with the timm layout (the custom export model) loading
    `state` strictly: the forward of V-JEPA's and UMT's encoders."""
    from twlv_jax.export.remote.configuration_twlv import TwlvVideoConfig
    from twlv_jax.export.remote.modeling_twlv import TwlvVideoModel

    model = TwlvVideoModel(TwlvVideoConfig(hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=256,
                                           num_frames=8, image_size=32, tubelet_size=2,
                                           patch_size=8, **fields)).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(parity.normalized(video))).last_hidden_state.numpy()


def test_import_original_vjepa_by_key_map(tmp_path):
    from flax import nnx

    from twlv_jax.export import encoder_tables
    from twlv_jax.objectives.hybrid import Pretrainer
    from twlv_jax.objectives.presets import resolve

    path = str(tmp_path / "vitt16.pth.tar")
    torch.save({"encoder": jepa_encoder(0), "target_encoder": jepa_encoder(1),
                "predictor": jepa_predictor(2), "epoch": 3}, path)
    out = str(tmp_path / "imported")
    assert import_cli.main(["vjepa", "--input", path, "--output", out]) == 0
    with open(os.path.join(out, "import_report.json")) as f:
        report = json.load(f)
    notes = "\n".join(report["notes"])
    assert "target_encoder -> the student; pos_embed checked: our sincos3d table for the grid " \
           "(4, 4, 4)" in notes and "checked by key names and shapes" in notes
    assert "mask_tokens.1 (V-JEPA's default mask_index) is used, mask_tokens.0 not" in notes
    # the student is the target encoder, the latent predictor V-JEPA's: both tables give
    # back the original arrays
    config, params = student.read(out)
    assert (config.model.pos_embed, config.model.frames, config.objective.preset) == \
           ("sincos3d", 8, "vjepa")
    target = {k.removeprefix("module.backbone."): v.numpy() for k, v in jepa_encoder(1).items()}
    back = export_params(params, encoder_tables.torch_rules(set(params), 2, 8))
    assert sorted(back) == sorted(set(target) - {"pos_embed"})
    for key, value in back.items():
        np.testing.assert_array_equal(value, target[key])
    # a PyTorch module of V-JEPA's layout loads the state dict strictly and computes our tokens
    video = clips(seed=13)
    target_state = {k: torch.from_numpy(v) for k, v in target.items() if k != "pos_embed"}
    np.testing.assert_allclose(load_encoder(out)(video, tokens=True)["tokens"],
                               reference_tokens(target_state, video, qkv_bias="all",
                                                pos_embed="sincos3d"), atol=1e-5, rtol=0)
    model = nnx.eval_shape(lambda: Pretrainer(config, resolve(config.objective), rngs=nnx.Rngs(0)))
    _, abstract = nnx.split(model)
    loaded, lines = ckptlib.load_params(out, nnx.to_pure_dict(abstract))   # init_from, strictly
    assert lines[0].startswith("loaded 35 of 35 parameter arrays")
    predictor = {k.removeprefix("latent.predictor."): np.asarray(v) for k, v in
                 weightlib.flatten(loaded).items() if k.startswith("latent.predictor.")}
    original = {k.removeprefix("module.backbone."): v.numpy() for k, v in jepa_predictor(2).items()}
    for key, value in export_params(predictor, encoder_tables.vjepa_predictor_rules(
            set(predictor), 1)).items():
        np.testing.assert_array_equal(value, original[key])
    # V-JEPA without uniform_power splits the width 1/2, 1/4, 1/4: refused, nothing written
    torch.save({"target_encoder": jepa_encoder(0, uniform_power=False)}, path)
    assert import_cli.main(["vjepa", "--input", path, "--output", str(tmp_path / "no")]) == 2
    assert not os.path.exists(tmp_path / "no")


def test_import_original_umt_by_key_map(tmp_path, capsys):
    rng = np.random.default_rng(3)
    encoder = {"patch_embed.proj.weight": torch.from_numpy(0.05 * rng.standard_normal(
                   (64, 3, 2, 8, 8)).astype(np.float32)),
               "patch_embed.proj.bias": torch.zeros(64) + 0.01,
               "norm.weight": torch.ones(64), "norm.bias": torch.zeros(64),
               **timm_blocks(rng, "blocks.", 2, 64, 256, "qv")}
    clip_decoder = {"clip_decoder.0.head.weight": torch.zeros(32, 64),
                    "clip_decoder.0.head.bias": torch.zeros(32),
                    "clip_decoder.0.norm.weight": torch.ones(32),
                    "clip_decoder.0.norm.bias": torch.zeros(32)}
    path = str(tmp_path / "umt.pth")
    torch.save({"model": {**{f"encoder.{k}": v for k, v in encoder.items()}, **clip_decoder},
                "epoch": 200}, path)
    out = str(tmp_path / "imported")
    # UMT's pretraining grid is (8, 14, 14): this tiny one was trained on 8 frames at 32 px
    assert import_cli.main(["umt", "--input", path, "--output", out, "--frames", "8",
                            "--image_size", "32"]) == 0
    with open(os.path.join(out, "import_report.json")) as f:
        report = json.load(f)
    assert report["ignored"] == ["4 keys of pretraining/classification heads (clip_decoder)"]
    config = load_encoder(out).config
    assert (config.model.qkv_bias, config.model.pos_embed, config.model.frames) == ("qv", "sincos1d", 8)
    video = clips(seed=14)
    np.testing.assert_allclose(load_encoder(out)(video, tokens=True)["tokens"],
                               reference_tokens(encoder, video, qkv_bias="qv", pos_embed="sincos1d"),
                               atol=1e-5, rtol=0)
    # a state dict of another project is named as such
    torch.save({"model": {"blocks.0.norm1.weight": torch.ones(64)}}, path)
    capsys.readouterr()
    assert import_cli.main(["umt", "--input", path, "--output", str(tmp_path / "no")]) == 2
    assert "no encoder.* keys" in capsys.readouterr().err
