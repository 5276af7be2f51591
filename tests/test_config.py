"""Config files, variant strings, overrides, durations and mesh shapes."""

import json

import pytest

from twlv_jax import config as cfglib

PRETRAIN = "configs/pretrain.py"


def test_variant_string_sets_model_and_objective():
    c = cfglib.load(f"{PRETRAIN}:variant=L,objective=umt")
    assert c.model.variant == "L"
    assert c.objective.preset == "umt"
    assert c.model.frames == 16 and c.model.image_size == 224


def test_tiny_variant_is_cpu_sized():
    c = cfglib.load(f"{PRETRAIN}:variant=tiny")
    assert (c.model.frames, c.model.image_size, c.model.patch) == (8, 32, 8)
    assert c.teacher.variant == "tiny"


def test_unknown_variant_argument_names_valid_ones():
    with pytest.raises(cfglib.ConfigError, match=r"'varient' is not known.*did you mean 'variant'"):
        cfglib.load(f"{PRETRAIN}:varient=L")


def test_override_types_follow_the_field():
    c = cfglib.build(PRETRAIN, [("optim.lr", "3e-4"), ("train.batch_size", "64"),
                                ("model.scan", "false"), ("data.crop_scale", "(0.5, 1.0)")])
    assert c.optim.lr == pytest.approx(3e-4) and isinstance(c.optim.lr, float)
    assert c.train.batch_size == 64 and isinstance(c.train.batch_size, int)
    assert c.model.scan is False
    assert c.data.crop_scale == (0.5, 1.0)
    c = cfglib.build(PRETRAIN, [("mesh.shape", "2,2,2"), ("data.path", "123")])
    assert c.mesh.shape == "2,2,2" and c.data.path == "123"


def test_int_field_accepts_float_literal_written_as_integer():
    c = cfglib.build(PRETRAIN, [("train.batch_size", "1e3")])
    assert c.train.batch_size == 1000


def test_typo_in_override_names_nearest_key():
    with pytest.raises(cfglib.ConfigError, match=r"unknown config key 'optim\.lrr'.*'optim\.lr'"):
        cfglib.build(PRETRAIN, [("optim.lrr", "1e-3")])
    with pytest.raises(cfglib.ConfigError, match=r"'trian\.steps'.*did you mean 'train\.steps'"):
        cfglib.build(PRETRAIN, [("trian.steps", "10")])


def test_wrong_type_override_says_what_was_expected():
    with pytest.raises(cfglib.ConfigError, match=r"train\.batch_size: expected a int like 2048"):
        cfglib.build(PRETRAIN, [("train.batch_size", "many")])
    with pytest.raises(cfglib.ConfigError, match=r"model\.scan: expected true or false"):
        cfglib.build(PRETRAIN, [("model.scan", "maybe")])


def test_placeholder_fields_take_values():
    c = cfglib.build(PRETRAIN, [("objective.mask.ratio", "0.75"), ("objective.mask.kind", "tube")])
    assert c.objective.mask.ratio == 0.75 and c.objective.mask.kind == "tube"


def test_duration_fields_accept_units():
    c = cfglib.build(PRETRAIN, [("train.steps", "30ep"), ("train.ckpt_every", "500")])
    assert c.train.steps == "30ep" and c.train.ckpt_every == 500


@pytest.mark.parametrize("value,expected", [
    (100, 100), ("100", 100), ("100steps", 100), ("2ep", 50), ("2 epochs", 50),
    ("1000ex", 32), ("1000examples", 32), ("0.5ep", 13),
])
def test_to_steps(value, expected):
    assert cfglib.to_steps(value, batch_size=32, examples_per_epoch=800) == expected


def test_to_steps_errors():
    with pytest.raises(ValueError, match="expected a duration like 1000"):
        cfglib.to_steps("10 fortnights", batch_size=8)
    with pytest.raises(ValueError, match="in epochs but the dataset size is unknown"):
        cfglib.to_steps("3ep", batch_size=8)


def test_cli_split_both_forms():
    overrides, rest = cfglib.split_cli(
        ["--config", "c.py", "--config.optim.lr=1e-3", "--config.train.steps", "7", "--workdir", "w"])
    assert overrides == [("optim.lr", "1e-3"), ("train.steps", "7")]
    assert rest == ["--config", "c.py", "--workdir", "w"]


@pytest.mark.parametrize("text,devices,expected", [
    ("1,-1,1", 8, (1, 8, 1)), ("2,-1,1", 8, (2, 4, 1)), ("-1,1,1", 4, (4, 1, 1)),
    ("2,2,2", 8, (2, 2, 2)), ((1, 1, 1), 1, (1, 1, 1)),
])
def test_mesh_shape(text, devices, expected):
    assert cfglib.mesh_shape(text, devices) == expected


@pytest.mark.parametrize("text,devices,message", [
    ("2,2,2", 4, "needs 8 devices, but 4 are available"),
    ("3,-1,1", 8, "8 devices are not divisible by the fixed axes"),
    ("-1,-1,1", 8, "at most one -1"),
    ("1,8", 8, "expected three sizes"),
    ("a,b,c", 8, "expected 'D,F,T'"),
])
def test_mesh_shape_errors(text, devices, message):
    with pytest.raises(cfglib.ConfigError, match=message):
        cfglib.mesh_shape(text, devices)


def test_missing_config_file_and_missing_get_config(tmp_path):
    with pytest.raises(cfglib.ConfigError, match="does not exist"):
        cfglib.load(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(cfglib.ConfigError, match="has no get_config"):
        cfglib.load(str(bad))


def test_save_round_trip(tmp_path):
    c = cfglib.build(f"{PRETRAIN}:variant=S", [("train.steps", "5ep")])
    path = tmp_path / "config.json"
    cfglib.save(c, str(path))
    data = json.loads(path.read_text())
    assert data["model"]["variant"] == "S" and data["train"]["steps"] == "5ep"
    assert cfglib.from_json(str(path)).optim.lr == c.optim.lr


def test_demo_config_is_tiny():
    c = cfglib.load("configs/demo.py")
    assert c.model.variant == "tiny" and c.train.steps == 1000 and c.train.batch_size == 32
