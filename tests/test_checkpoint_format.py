"""Checkpoint format versions: a checkpoint written by older code (tests/fixtures/checkpoint_v1,
made before format versions) still resumes; one newer than the code is a one-line error."""

import json
import logging
import os
import re
import shutil

import pytest

from twlv_jax import cli
from twlv_jax import config as cfglib
from twlv_jax.train import checkpoint as ckptlib
from twlv_jax.train import inspect as inspectlib
from twlv_jax.train import loop

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint_v1")
VIDEOS = os.path.join(FIXTURE, "videos", "train.csv")
# The fixture's command (its README), with this folder's videos and 8 clips a step for
# the 8 simulated devices (the batch and data path do not shape the state).
ARGS = "configs/pretrain.py:variant=tiny,objective=twlv,frames=4,res=16"
OVERRIDES = [("data.path", VIDEOS), ("data.workers", "0"), ("train.batch_size", "8"),
             ("train.ckpt_every", "2"), ("train.log_every", "1"), ("train.keep", "1"),
             ("objective.pixel.decoder_width", "16"), ("objective.pixel.decoder_depth", "1"),
             ("objective.latent.predictor_width", "16"), ("objective.latent.predictor_depth", "1"),
             ("objective.distill.layers", "1"), ("teacher.allow_random", "true")]


@pytest.fixture
def workdir(tmp_path) -> str:
    """A copy of the fixture's workdir (a run resumes into it)."""
    target = str(tmp_path / "run")
    shutil.copytree(os.path.join(FIXTURE, "workdir"), target)
    return target


def meta_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")


def test_the_fixture_is_a_checkpoint_from_before_format_versions(workdir):
    with open(meta_path(workdir, 2)) as f:
        meta = json.load(f)
    assert "format_version" not in meta and ckptlib.format_version(meta) == 1
    text = inspectlib.describe(workdir)
    assert "format      1 (written before checkpoint format versions)" in text
    assert "ema." in text and "params.pixel" in text and "params.latent" in text


def test_a_version_1_checkpoint_resumes_and_saves_the_current_version(workdir, caplog):
    caplog.set_level(logging.INFO, logger="twlv.train")
    summary = loop.run(cfglib.build(ARGS, [*OVERRIDES, ("train.steps", "4")]), workdir)
    assert (summary["outcome"], summary["start_step"], summary["step"]) == ("done", 2, 4)
    assert (f"state: resumed from {workdir}/checkpoints step 2 (checkpoint format 1, read as "
            f"format {ckptlib.FORMAT_VERSION}; new checkpoints are format "
            f"{ckptlib.FORMAT_VERSION})") in caplog.messages
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    with open(meta_path(workdir, 4)) as f:
        meta = json.load(f)
    assert meta["format_version"] == ckptlib.FORMAT_VERSION and meta["batches"] == 4


def test_a_newer_format_is_a_one_line_error_and_the_checkpoint_is_kept(workdir, capsys):
    path = meta_path(workdir, 2)
    with open(path) as f:
        meta = json.load(f)
    meta["format_version"] = ckptlib.FORMAT_VERSION + 1
    with open(path, "w") as f:
        json.dump(meta, f)
    expected = (f"checkpoint {workdir}/checkpoints/2 has format version {ckptlib.FORMAT_VERSION + 1}"
                f", but this twlv-jax reads versions up to {ckptlib.FORMAT_VERSION}: read it with "
                "the newer twlv-jax that wrote it")
    argv = ["train", "--config", ARGS, "--workdir", workdir, "--config.train.steps=4",
            *(f"--config.{key}={value}" for key, value in OVERRIDES)]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"twlv train: {expected}"
    assert cli.main(["inspect", workdir]) == 2
    assert capsys.readouterr().err.strip() == f"twlv inspect: {expected}"
    with pytest.raises(ckptlib.FormatError, match=f"^{re.escape(expected)}$"):
        ckptlib.load_params(workdir, {})
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]     # not set aside
