"""Faults and bad input (issue 17): real processes, real files, real checkpoints.

Each test names the numbered item of docs/reliability.md it covers. Runs share the
configs of tests/test_train_loop.py so their compiled steps come from the cache.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from conftest import SUB_ENV, wait_for_step
from safetensors.numpy import save_file

from twlv_jax import cli
from twlv_jax import config as cfglib
from twlv_jax.data import pipeline
from twlv_jax.data.manifest import read_manifest, write_manifest
from twlv_jax.data.quarantine import TooManyBadFiles
from twlv_jax.data.synthetic import SynthOptions, write_synthetic
from twlv_jax.train import checkpoint as ckptlib
from twlv_jax.train import inspect as inspectlib
from twlv_jax.train import loop, validate

# A failed Orbax read leaves callbacks that fire after its event loop closed; the
# checkpoint module drops them from the process's hook, which pytest replaces per test.
CLOSED_LOOP = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")



@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(str(root), SynthOptions(train=24, val=8, frames=24, size=40))
    return root


def tiny_config(videos, *overrides):
    """tests/test_train_loop.py's in-process config (8 devices, batch 8, 12 steps)."""
    base = [("data.path", str(videos / "train.csv")), ("data.workers", "0"), ("train.batch_size", "8"),
            ("train.log_every", "1"), ("train.ckpt_every", "5"), ("train.steps", "12")]
    return cfglib.build("configs/pretrain.py:variant=tiny,objective=twlv",
                        base + [tuple(o.split("=", 1)) for o in overrides])


def train_cli(videos, workdir, *overrides):
    """tests/test_train_loop.py's subprocess run (2 devices, 1 Grain worker, no end)."""
    return [sys.executable, "-m", "twlv_jax", "train", "--config", "configs/pretrain.py:variant=tiny",
            "--workdir", str(workdir), f"--config.data.path={videos / 'train.csv'}",
            "--config.data.workers=1", "--config.train.batch_size=4", "--config.train.log_every=1",
            "--config.train.ckpt_every=10", "--config.train.steps=100000", *overrides]


@pytest.fixture(scope="module")
def trained(videos, tmp_path_factory):
    """A finished 12-step run: checkpoints 5, 10 and 12, metrics, config."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    loop.run(tiny_config(videos), workdir)
    return workdir


def copy_run(trained, tmp_path) -> str:
    target = str(tmp_path / "run")
    shutil.copytree(trained, target)
    return target


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def largest_array_file(step_dir: str) -> str:
    return max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
               key=os.path.getsize)


def grain_workers(pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children() if "spawn_main" in " ".join(c.cmdline())]


# ---------------------------------------------------------------------------
# 1, 2, 3: no hangs, no orphans.

def test_1_unwritable_folders_fail_at_once(videos, tmp_path):
    """A folder that cannot take files: before anything is built, and at a later save."""
    # Read-only for real: root without the capabilities that bypass permission bits.
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    workdir = tmp_path / "ro"
    (workdir / "checkpoints").mkdir(parents=True)
    os.chmod(workdir / "checkpoints", 0o555)
    command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               *train_cli(videos, workdir)]
    start = time.time()
    result = subprocess.run(command, env=SUB_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot write to {workdir / 'checkpoints'}: Permission denied" in result.stderr
    assert "Traceback" not in result.stderr and time.time() - start < 60
    assert not (workdir / "metrics.jsonl").exists()
    # A folder that goes away during the run: the save fails at once, naming it.
    folder = tmp_path / "gone"
    checkpoints = ckptlib.Checkpoints(str(folder), keep=2)
    folder.rmdir()
    folder.write_text("not a folder")
    start = time.time()
    with pytest.raises(ckptlib.CheckpointError, match=f"cannot write checkpoints to {folder}"):
        checkpoints.save(1, {"a": np.zeros(3)}, None, {})
    assert time.time() - start < 5
    checkpoints.close()


def test_2_no_readable_video_stops_with_a_clear_error(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.mp4").write_text("not a video")
    rows = [{"path": str(tmp_path / f"bad{i}.mp4")} for i in range(3)]
    for name, listed in (("all", rows), ("repeats", rows[:1] * 20)):
        manifest = write_manifest(str(tmp_path / f"{name}.csv"), listed)
        data = cfglib.build("configs/pretrain.py:variant=tiny", [
            ("data.path", manifest), ("data.workers", "0"), ("data.max_bad_fraction", "1.0")]).data
        iterator, _ = pipeline.make_train_iterator(
            data, frames=8, image_size=32, global_batch_size=2, seed=0, process_index=0,
            process_count=1, quarantine_path=str(tmp_path / f"{name}-q.csv"))
        with pytest.raises(TooManyBadFiles, match=r"every file is unreadable|no readable clip"):
            next(iterator)


def test_2_sigterm_while_waiting_on_a_stuck_data_worker(videos, tmp_path):
    workdir = tmp_path / "stall"
    process = subprocess.Popen(train_cli(videos, workdir), env=SUB_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(os.path.join(workdir, "metrics.jsonl"), 3, process, 120)
    stalled = grain_workers(process.pid)
    assert stalled
    for worker in stalled:                  # a data worker that never answers again
        worker.suspend()
    try:
        time.sleep(2)                       # the prefetched batches run out
        sent = time.time()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert time.time() - sent < 30
    finally:
        for worker in stalled:
            if worker.is_running():
                worker.kill()
    assert process.returncode == 0, err[-3000:]
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split("/")[0])
    assert ckptlib.Checkpoints(str(workdir / "checkpoints"), read_only=True).latest_step() == stopped_at


READER = """
import sys
from absl import flags
flags.FLAGS.mark_as_parsed()
from twlv_jax import config as cfglib
from twlv_jax.data import pipeline
data = cfglib.build("configs/pretrain.py:variant=tiny", [("data.path", sys.argv[1]),
                                                          ("data.workers", "2")]).data
iterator, _ = pipeline.make_train_iterator(data, frames=8, image_size=32, global_batch_size=2,
    seed=0, process_index=0, process_count=1, quarantine_path=None)
while True:
    next(iterator)
    print("batch", flush=True)
"""


def test_3_grain_workers_die_with_a_killed_parent(videos):
    process = subprocess.Popen([sys.executable, "-c", READER, str(videos / "train.csv")],
                               env=SUB_ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "batch\n"
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(grain_workers(process.pid)) == 2 and len(children) == 3   # + resource tracker
    process.kill()                                                       # kill -9
    process.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


# ---------------------------------------------------------------------------
# 4: corrupt checkpoints.

def corrupt(workdir: str, step: int, how: str) -> None:
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    if how == "truncated array file":
        with open(largest_array_file(step_dir), "r+b") as f:
            f.truncate(100)
    elif how == "deleted array file":
        os.remove(largest_array_file(step_dir))
    elif how == "garbled meta":
        with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
            f.write("{garbage")
    elif how == "empty step folder":
        shutil.rmtree(step_dir)
        os.makedirs(step_dir)


@CLOSED_LOOP
@pytest.mark.parametrize("how", ["truncated array file", "garbled meta", "empty step folder"])
def test_4_verify_names_what_is_damaged(trained, tmp_path, how, capsys):
    workdir = copy_run(trained, tmp_path)
    corrupt(workdir, 12, how)
    checkpoints = ckptlib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
    problems = checkpoints.verify(12)
    assert checkpoints.verify(10) == []
    checkpoints.close()
    expected = {"truncated array file": "state.", "deleted array file": "state.",
                "garbled meta": "meta: JSONDecodeError", "empty step folder": "meta: "}[how]
    assert problems and all("\n" not in p for p in problems)
    assert any(p.startswith(expected) for p in problems), problems
    assert inspectlib.main([workdir, "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"verify {workdir}/checkpoints/12: DAMAGED" in out and expected in out
    if how == "garbled meta":           # without --verify: one line, not a healthy report
        assert inspectlib.main([workdir]) == 2
        assert "checkpoints/12 is corrupt (JSONDecodeError" in capsys.readouterr().err


@CLOSED_LOOP
def test_4_resume_falls_back_to_the_newest_intact_checkpoint(videos, trained, tmp_path, caplog):
    workdir = copy_run(trained, tmp_path)
    corrupt(workdir, 12, "deleted array file")
    # 5 too: a change that does not shape the state is a warning and a history entry.
    summary = loop.run(tiny_config(videos, "train.keep=4"), workdir)
    assert summary["start_step"] == 10 and summary["step"] == 12 and summary["outcome"] == "done"
    assert f"checkpoint {workdir}/checkpoints/12 is corrupt (ValueError: " in caplog.text
    assert "Event loop is closed" not in caplog.text
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "12", "12.corrupt", "5"]
    assert "train.keep: 3 -> 4" in caplog.text
    with open(os.path.join(workdir, "config_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert history[0]["start_step"] == 0 and history[0]["config"]["train"]["keep"] == 3
    assert history[-1]["start_step"] == 10 and history[-1]["changes"] == {"train.keep": [3, 4]}
    # Every checkpoint corrupt: no silent fresh start.
    for step in (5, 10, 12):
        corrupt(workdir, step, "garbled meta")
    with pytest.raises(loop.WorkdirError, match=r"every checkpoint is corrupt .*--start_over"):
        loop.run(tiny_config(videos, "train.keep=4"), workdir)


# ---------------------------------------------------------------------------
# 5, 6: config changes on resume; records without checkpoints.

def test_5_state_keys_and_config_changes(videos):
    saved = tiny_config(videos).to_dict()
    changed = tiny_config(videos, "model.patch=4", "objective.pixel.weight=0", "model.remat=full",
                          "train.batch_size=16").to_dict()
    structural, other = ckptlib.config_changes(saved, changed)
    assert structural == {"model.patch": (8, 4),
                          "objective.targets": (["distill", "latent", "pixel"], ["distill", "latent"])}
    assert set(other) == {"model.remat", "objective.pixel.weight", "train.batch_size"}
    assert ckptlib.shapes_state("model.scan") and not ckptlib.shapes_state("model.dtype")


def test_5_resume_refuses_a_changed_state_and_stops_when_done(videos, trained, tmp_path, capsys):
    workdir = copy_run(trained, tmp_path)
    records = [os.path.join(workdir, n) for n in ("metrics.jsonl", "config_history.jsonl")]
    before = [read_text(path) for path in records]
    with pytest.raises(cfglib.ConfigError, match=r"(?s)model.variant: 'tiny' in the checkpoint, "
                                                 r"'S' now.*objective.targets"):
        loop.run(tiny_config(videos, "model.variant=S", "objective.latent.weight=0"), workdir)
    summary = loop.run(tiny_config(videos, "train.steps=8"), workdir)
    assert summary["outcome"] == "nothing to do" and summary["step"] == 12
    assert "nothing to do: the checkpoint is at step 12" in loop.summary_text(summary, workdir)
    assert [read_text(path) for path in records] == before        # nothing rewritten


def test_6_no_fresh_start_over_earlier_records(videos, trained, tmp_path):
    workdir = copy_run(trained, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    with pytest.raises(loop.WorkdirError, match=r"holds an earlier run's records .* no checkpoint"):
        loop.run(tiny_config(videos), workdir)
    assert os.path.isfile(os.path.join(workdir, "metrics.jsonl"))       # untouched
    # --start_over: the earlier records move aside (what the run does next is a fresh run).
    loop.refuse_fresh_start(workdir, "it has no checkpoint to resume from", start_over=True)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    assert len(glob.glob(os.path.join(workdir, "metrics.jsonl.before-*"))) == 1


# ---------------------------------------------------------------------------
# 7, 8: one clear line; late checks made early.

def one_line_error(capsys, argv) -> str:
    """The error line of a failing command (after any warnings); no traceback anywhere."""
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err, err
    return err.splitlines()[-1]


def test_7_one_line_errors(videos, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    train = ["train", "--config", "configs/pretrain.py:variant=tiny",
             f"--config.data.path={videos / 'train.csv'}"]
    err = one_line_error(capsys, [*train, "--workdir", str(afile)])
    assert err == f"twlv train: workdir {afile} is a file, not a folder"
    err = one_line_error(capsys, [*train, "--workdir", str(afile / "sub")])
    assert "cannot create the workdir" in err and "Not a directory" in err
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return (\n")
    err = one_line_error(capsys, ["train", "--config", str(broken), "--workdir", str(tmp_path)])
    assert err == f"twlv train: {broken}:2: '(' was never closed"
    err = one_line_error(capsys, [*train, "--workdir", str(tmp_path), "--config.train.steps"])
    assert "--config.train.steps needs a value" in err
    # An error no verb expects: one line naming it and a file with the traceback;
    # --debug raises it instead.
    err = one_line_error(capsys, ["inspect", str(afile), "--step", "1"])
    assert err == f"twlv inspect: no checkpoint under '{afile}'"
    raising = tmp_path / "raises.py"
    raising.write_text("def get_config(arg=None):\n    return None\n")
    err = one_line_error(capsys, ["train", "--config", str(raising), "--workdir", str(tmp_path),
                                  "--config.a.b=1"])
    assert "get_config must return" in err


def test_7_unexpected_errors_and_broken_pipes(trained, tmp_path, capsys, monkeypatch):
    def fail(argv):
        raise KeyError("the unexpected")

    monkeypatch.setattr(inspectlib, "main", fail)
    err = one_line_error(capsys, ["inspect", "x"])
    assert err.startswith("twlv inspect: KeyError: 'the unexpected' (traceback: ")
    with open(err.split("(traceback: ")[1].split(";")[0]) as f:
        assert "Traceback" in f.read()
    with pytest.raises(KeyError):
        cli.main(["inspect", "x", "--debug"])
    monkeypatch.undo()
    result = subprocess.run(f"{sys.executable} -m twlv_jax inspect {trained} | head -1",
                            shell=True, env=dict(SUB_ENV, XLA_FLAGS=""), capture_output=True,
                            text=True)
    assert result.stdout.startswith("checkpoint ") and result.stderr == ""


def test_8_files_are_checked_before_anything_is_built(videos, tmp_path):
    teacher = str(tmp_path / "teacher.safetensors")
    save_file({"w": np.zeros((64, 64), np.float32)}, teacher)
    os.truncate(teacher, 1000)
    workdir = str(tmp_path / "never")
    config = tiny_config(videos, f"teacher.weights={teacher}", f"train.probe_path={tmp_path}",
                         f"objective.video_teacher.weights={tmp_path / 'missing.safetensors'}")
    with pytest.raises(cfglib.ConfigError) as caught:
        loop.run(config, workdir)
    message = str(caught.value)
    assert f"teacher.weights='{teacher}': not a readable safetensors file" in message
    assert "objective.video_teacher.weights=" in message and "no such file" in message
    assert f"train.probe_path='{tmp_path}': expected a folder with train.csv" in message
    assert not os.path.exists(workdir)                 # nothing was created, let alone built


# ---------------------------------------------------------------------------
# 9, 10: silent acceptance.

def test_9_bad_fault_injection_and_repeated_manifest_rows(videos, tmp_path, caplog):
    with pytest.raises(cfglib.ConfigError, match=r"train\.inject_nan_batches must be data stream"):
        validate.validate(tiny_config(videos, "train.inject_nan_batches=abc"), num_devices=8)
    row = {"path": str(videos / "videos" / "a.mp4")}
    manifest = write_manifest(str(tmp_path / "dup.csv"), [row] * 20 + [{"path": "b.mp4"}])
    read_manifest(manifest)
    assert "lists 1 file(s) more than once (19 extra rows" in caplog.text
    assert "a.mp4 x20" in caplog.text


def test_10_every_frozen_teacher_follows_one_policy(videos):
    video_teacher = ("objective.video_teacher.weight=1", "objective.video_teacher.variant=S")
    with pytest.raises(cfglib.ConfigError, match=r"video teacher \(S\) but "
                                                 r"objective.video_teacher.weights is empty"):
        validate.teacher_warning(tiny_config(videos, *video_teacher))
    allowed = validate.teacher_warning(tiny_config(videos, *video_teacher, "teacher.allow_random=true"))
    assert "THE VIDEO TEACHER IS RANDOMLY INITIALISED" in allowed
    assert "THE IMAGE TEACHER IS RANDOMLY INITIALISED" in allowed
    assert {len(line) for line in allowed.splitlines()} == {78}
