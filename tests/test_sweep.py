"""Sweeps: the hyper vocabulary, run names, config files, dry runs, and a tiny sweep end to end."""

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import SUB_ENV, wait_for_step

from twlv_jax import config as cfglib
from twlv_jax.data.synthetic import SynthOptions, write_synthetic
from twlv_jax.models.vit import SIZES
from twlv_jax.objectives.presets import PRESETS
from twlv_jax.sweep import cli, evaluate, execute
from twlv_jax.sweep.expand import expand
from twlv_jax.sweep.hyper import MAX_NAME, Hyper, run_names
from twlv_jax.train.validate import validate

# Each config file's declared variants (FILE:ARGS); a file not listed is built as is.
VARIANTS = {
    "configs/pretrain.py": [f"variant={v}" for v in SIZES]
    + [f"variant={v},objective={o}" for v in ("tiny", "B") for o in PRESETS if o != "none"],
}
SETTINGS = ("setting=cpu", "setting=paper")
SAFE = re.compile(r"^[A-Za-z0-9._=+-]+$")


def test_hyper_vocabulary():
    h = Hyper()
    lr, wd = h.sweep("config.optim.lr", [1, 2]), h.sweep("config.optim.weight_decay", [3, 4])
    assert h.product([lr, wd]) == [{"config.optim.lr": a, "config.optim.weight_decay": b}
                                   for a in (1, 2) for b in (3, 4)]
    assert h.zipit([lr, wd]) == [{"config.optim.lr": 1, "config.optim.weight_decay": 3},
                                 {"config.optim.lr": 2, "config.optim.weight_decay": 4}]
    assert h.chainit([lr, wd]) == lr + wd
    assert h.zipit([lr, h.fixed("arg.variant", "S", 2)])[1] == {"config.optim.lr": 2, "arg.variant": "S"}
    with pytest.raises(ValueError, match="one length"):
        h.zipit([lr, h.fixed("config.seed", 1)])
    with pytest.raises(ValueError, match=r"must start with 'config\.'"):
        h.sweep("optim.lr", [1])
    with pytest.raises(ValueError, match=r"sets 'config\.optim\.lr' twice"):
        h.product([lr, lr])


def test_run_names_are_short_safe_unique_and_stable():
    h = Hyper()
    runs = h.product([h.sweep("config.objective.distill.weight", [0.0, 1.0]),
                      h.sweep("config.objective.pixel.weight", [0.5]),
                      h.sweep("config.data.crop_scale", [(0.3, 1.0), "a/b c"])])
    assert run_names(runs) == ["distill=0_crop_scale=0.3x1", "distill=0_crop_scale=a-b-c",
                               "distill=1_crop_scale=0.3x1", "distill=1_crop_scale=a-b-c"]
    assert run_names(runs[::-1]) == run_names(runs)[::-1]          # order-free
    long = h.sweep("config.data.path", ["x" * 100 + "1", "x" * 100 + "2"])
    names = run_names(long)
    assert len(set(names)) == 2 and all(len(n) <= MAX_NAME and SAFE.match(n) for n in names)
    clash = run_names(h.sweep("config.data.path", ["a/b", "a b"]))   # both sanitise to a-b
    assert clash[0] != clash[1] and clash[0].startswith("path=a-b-")
    assert run_names([{}]) == ["base"]


def _config_files():
    return sorted(glob.glob("configs/**/*.py", recursive=True))


@pytest.mark.parametrize("path", _config_files())
def test_every_config_builds_and_validates_for_its_variants(path):
    module = cfglib.load_module(path)
    args = VARIANTS.get(path) or (SETTINGS if path.startswith("configs/ablations/") else [""])
    for arg in args:
        spec = f"{path}:{arg}" if arg else path
        validate(cfglib.load(spec), 8)
        if hasattr(module, "get_hyper"):
            runs = expand(spec, num_devices=8)          # builds and validates every run
            names = [r.name for r in runs]
            assert len(set(names)) == len(names) and all(SAFE.match(n) for n in names), names


def test_ablations_expand_to_the_expected_runs():
    names = lambda spec: [r.name for r in expand(spec, num_devices=8)]
    assert names("configs/ablations/targets.py:setting=cpu") == [
        "distill=1_pixel=0_latent=0", "distill=0_pixel=1_latent=0", "distill=0_pixel=0_latent=1",
        "distill=1_pixel=1_latent=0", "distill=1_pixel=0_latent=1", "distill=0_pixel=1_latent=1",
        "distill=1_pixel=1_latent=1"]
    masking = names("configs/ablations/masking.py:setting=paper")
    assert len(masking) == 12 and masking[0] == "kind=tube_ratio=0.75"
    assert names("configs/ablations/model_size.py:setting=paper") == ["variant=B", "variant=L"]
    assert names("configs/ablations/model_size.py:setting=cpu") == ["variant=tiny", "variant=S"]
    assert names("configs/ablations/teacher_layers.py:setting=paper") == [
        "layers=1", "layers=2", "layers=4", "layers=6"]
    assert len(names("configs/ablations/target_weights.py:setting=cpu")) == 7
    run = expand("configs/ablations/targets.py:setting=paper", num_devices=8)[1]
    assert (run.config.model.variant, run.config.objective.distill.weight) == ("B", 0.0)


def _sweep_file(tmp_path, body, evaluation=None, name="sweep.py"):
    """A sweep file over the tiny config; `evaluation`: what its get_sweep_eval returns."""
    path = tmp_path / name
    path.write_text("import os\nfrom twlv_jax.config import load_module\n\n"
                    "def get_config(arg=None):\n"
                    f"    return load_module({os.path.abspath('configs/pretrain.py')!r})"
                    ".get_config('variant=tiny')\n\n"
                    f"def get_hyper(h):\n    return {body}\n"
                    + (f"\ndef get_sweep_eval():\n    return {evaluation!r}\n" if evaluation else ""))
    return str(path)


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_bad_key_or_value_fails_at_expansion_naming_the_run_and_the_key(tmp_path, capsys):
    spec = _sweep_file(tmp_path, "h.sweep('config.objective.mask.ratio', [0.5, 1.0])")
    code, out, err = _main(capsys, spec, "--workdir", str(tmp_path / "w"), "--devices", "8")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("twlv sweep: run ratio=1: objective.mask.ratio 1.0 leaves no visible")
    code, _, err = _main(capsys, spec, "--workdir", str(tmp_path / "w"), "--config.optim.lrr=1")
    assert code == 2 and "run ratio=0.5: unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" in err
    code, _, err = _main(capsys, spec, "--workdir", str(tmp_path / "w"), "--devices", "3")
    assert code == 2 and "train.batch_size=8 is not divisible by the data-parallel size 3" in err
    good = _sweep_file(tmp_path, "h.sweep('config.objective.mask.ratio', [0.5, 0.75])")
    code, _, err = _main(capsys, good, "--workdir", str(tmp_path / "w"), "--only", "ratio=0.7")
    assert code == 2 and "--only: no run named 'ratio=0.7'" in err
    assert not os.path.exists(tmp_path / "w")


def test_launchers_name_the_device_count_that_runs_are_checked_against(tmp_path, capsys):
    assert execute.launcher_devices("slurm", ["--nodes=4"]) == 32
    assert execute.launcher_devices("xpk", ["--tpu_type=v5p-128", "--num_slices=2"]) == 128
    assert execute.launcher_devices("xpk", ["--tpu_type=v5litepod-16"]) == 16
    assert execute.launcher_devices("tpu_vm", ["--tpu=pod"]) is None
    spec = _sweep_file(tmp_path, "h.sweep('config.seed', [0, 1])")
    code, _, err = _main(capsys, spec, "--workdir", str(tmp_path / "w"), "--dry_run", "--launcher",
                         "slurm", "--launcher_args", "--nodes=3 --gpus_per_node=1")
    assert code == 2 and "run seed=0: train.batch_size=8 is not divisible by the data-parallel size 3" in err


def test_dry_run_prints_the_runs_and_their_commands(tmp_path, capsys):
    root = str(tmp_path / "abl")
    code, out, _ = _main(capsys, "configs/ablations/teacher_layers.py:setting=cpu", "--workdir", root,
                         "--dry_run", "--config.train.steps=5")
    assert code == 0 and not os.path.exists(root)
    assert f"2 run(s) under {root}:" in out and "[2] layers=2: objective.distill.layers=2" in out
    assert (f"-m twlv_jax train --config configs/ablations/teacher_layers.py:setting=cpu --workdir "
            f"{root}/layers=1 --config.train.steps=5 --config.objective.distill.layers=1 "
            "--start_over") in out
    result = subprocess.run(
        [sys.executable, "-m", "twlv_jax", "sweep", "configs/ablations/model_size.py:setting=paper",
         "--workdir", "/shared/size", "--dry_run", "--launcher", "slurm",
         "--launcher_args", "--nodes=4 --partition=a3"], capture_output=True, text=True, env=SUB_ENV)
    assert result.returncode == 0, result.stderr
    sbatch = [line for line in result.stdout.splitlines() if line.startswith("sbatch")]
    assert len(sbatch) == 2 and "--nodes=4" in sbatch[1] and "--partition=a3" in sbatch[1]
    assert "/shared/size/variant=L\\ " in sbatch[1] and "--config.model.variant=L" in sbatch[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(str(root), SynthOptions(train=24, val=8, frames=24, size=40))
    return root


def _sweep_cli(spec, root, videos):
    return [sys.executable, "-m", "twlv_jax", "sweep", spec, "--workdir", str(root),
            f"--config.data.path={videos / 'train.csv'}", f"--config.train.probe_path={videos}",
            "--config.data.workers=0", "--config.train.steps=30", "--config.train.ckpt_every=3",
            "--config.train.log_every=1", "--config.train.probe_every=30"]


def test_tiny_sweep_runs_is_interrupted_resumes_and_tabulates(tmp_path, videos):
    # One run that fails when it starts (a missing teacher file), then two seeds.
    spec = _sweep_file(tmp_path, "h.chainit([h.fixed('config.teacher.weights', '/no/teacher.st'), "
                                 "h.sweep('config.seed', [0, 1])])")
    root = tmp_path / "sweep"
    process = subprocess.Popen(_sweep_cli(spec, root, videos), env=SUB_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(str(root / "seed=1" / "metrics.jsonl"), 3, process, 300)
    while not os.path.isdir(root / "seed=1" / "checkpoints" / "3"):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    assert "[1/3] weights=no-teacher.st: failed (exit code 2: twlv train: invalid config:" in out
    assert "[2/3] seed=0: done" in out and "[3/3] seed=1: interrupted" in out
    assert "stopped by SIGTERM; run the same command again to resume" in err

    again = subprocess.run(_sweep_cli(spec, root, videos), env=SUB_ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[2/3] seed=0: done already, skipped" in again.stdout
    assert "[3/3] seed=1: resuming" in again.stdout and "[3/3] seed=1: done" in again.stdout
    with open(root / "seed=1" / "train.log") as f:
        assert "resumed from" in f.read()
    assert "3 run(s): 1 failed, 2 done" in again.stdout

    with open(root / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert [rows[n]["state"] for n in ("weights=no-teacher.st", "seed=0", "seed=1")] == [
        "failed", "done", "done"]
    assert "no such file" in rows["weights=no-teacher.st"]["note"]
    for name in ("seed=0", "seed=1"):
        assert rows[name]["step"] == "30" and float(rows[name]["clips_per_s"]) > 0
        assert {"loss", "loss/distill", "loss/pixel", "loss/latent"} <= set(rows[name])
        assert 0 <= float(rows[name]["probe/knn_label_motion"]) <= 1
    markdown = (root / "results.md").read_text()
    assert "| run | state | weights | seed | step | loss |" in markdown
    assert (root / "results.png").read_bytes()[:4] == b"\x89PNG"
    with open(root / "seed=0" / "sweep_run.json") as f:
        assert json.load(f)["config"]["seed"] == 0

    collected = subprocess.run([*_sweep_cli(spec, root, videos), "--collect"], env=SUB_ENV,
                               capture_output=True, text=True)
    assert collected.returncode == 0 and "3 run(s): 1 failed, 2 done" in collected.stdout


def test_xpk_launcher_names_workloads_within_40_characters_and_sets_the_cache():
    def xpk(*args):
        return subprocess.run(["launch/xpk.sh", "--dry_run", *args], capture_output=True, text=True)

    out = xpk("--cluster=c1", "--tpu_type=v5p-128", "--image=gcr.io/p/twlv:1", "--num_slices=2",
              "configs/pretrain.py:variant=L", "gs://b/abl_masking/kind=multiblock3d_ratio=0.75",
              "--config.optim.lr=1e-3").stdout
    assert out.startswith("xpk workload create --cluster c1 --workload abl-masking-kind-multiblock3d-")
    name = out.split("--workload ")[1].split()[0]
    assert len(name) <= 40 and re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", name)
    assert "--docker-image gcr.io/p/twlv:1 --tpu-type v5p-128 --num-slices 2 --command" in out
    assert "JAX_COMPILATION_CACHE_DIR=gs://b/abl_masking/jax_cache" in out
    assert "--coordinator=auto\\ --config.optim.lr=1e-3" in out
    missing = xpk("c.py", "w")
    assert missing.returncode != 0 and "--cluster=NAME is required" in missing.stderr


def test_an_evaluation_request_is_checked_at_expansion(tmp_path, videos, capsys):
    seeds = "h.sweep('config.seed', [0, 1])"
    root = str(tmp_path / "w")
    spec = _sweep_file(tmp_path, seeds, {"probes": ["knn"]})
    code, out, err = _main(capsys, spec, "--workdir", root, "--devices", "8")
    assert code == 2 and out == ""
    assert err.startswith("twlv sweep: run seed=0: the evaluation needs a folder with train and val "
                          "manifests: set train.probe_path or give --eval_input")
    code, _, err = _main(capsys, spec, "--workdir", root, "--devices", "8", "--eval", "knn,svm")
    assert code == 2 and "evaluation probe 'svm': expected any of knn, linear" in err
    spec = _sweep_file(tmp_path, seeds, {"probes": "linear", "labels": ["label_colour"]}, "b.py")
    code, _, err = _main(capsys, spec, "--workdir", root, "--devices", "8",
                         f"--config.train.probe_path={videos}")
    assert code == 2 and ("run seed=0: evaluation input " in err and "no label column "
                          "'label_colour' in both train and val (label columns: label, "
                          "label_appearance, label_motion)" in err)
    spec = _sweep_file(tmp_path, seeds, {"probes": "knn", "split": "val"}, "c.py")
    code, _, err = _main(capsys, spec, "--workdir", root, "--devices", "8")
    assert code == 2 and "get_sweep_eval: unknown key 'split'; expected probes, input, labels" in err
    assert not os.path.exists(root)


def test_dry_run_prints_the_evaluation_commands(tmp_path, videos, capsys):
    root = str(tmp_path / "w")
    spec = _sweep_file(tmp_path, "h.sweep('config.seed', [0])", {"probes": ["knn", "linear"]})
    code, out, _ = _main(capsys, spec, "--workdir", root, "--devices", "8", "--dry_run",
                         "--config.train.steps=12", f"--eval_input={videos}")
    assert code == 0 and not os.path.exists(root)
    lines = out.splitlines()
    output = os.path.join(evaluate.step_dir(f"{root}/base", evaluate.Evaluation((), str(videos), ()),
                                            12), "label")
    assert lines[-4].endswith(f"-m twlv_jax embed --checkpoint {root}/base --step 12 --input "
                              f"{videos} --split train --label label --output {output}")
    assert " --split val " in lines[-3]
    assert lines[-2].endswith(f"-m twlv_jax knn --embeddings {output}")
    assert lines[-1].endswith(f"-m twlv_jax probe --embeddings {output}")
    code, out, _ = _main(capsys, spec, "--workdir", root, "--devices", "8", "--dry_run",
                         "--eval", "none")
    assert code == 0 and " embed " not in out


def test_tiny_sweep_evaluates_each_finished_run_and_tabulates_top1(tmp_path, videos):
    labels = ["label_appearance", "label_motion"]
    spec = _sweep_file(tmp_path, "h.sweep('config.seed', [0])",
                       {"probes": ["knn", "linear"], "labels": labels})
    root = tmp_path / "sweep"
    command = [*_sweep_cli(spec, root, videos), "--config.train.steps=4", "--config.train.ckpt_every=4",
               "--config.train.probe_every=4"]
    result = subprocess.run(command, env=SUB_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "[1/1] base: done" in result.stdout and "[1/1] base: evaluating" in result.stdout
    assert re.search(r"\[1/1\] base: evaluated: knn_label_appearance 0\.\d+, linear_label_appearance "
                     r"0\.\d+, knn_label_motion 0\.\d+, linear_label_motion 0\.\d+", result.stdout)
    with open(root / "results.csv") as f:
        row = next(csv.DictReader(f))
    evaluation = evaluate.Evaluation(("knn", "linear"), str(videos), tuple(labels))
    step = evaluate.step_dir(str(root / "base"), evaluation, 4)
    for label in labels:
        for probe, name in evaluate.PROBES.items():
            with open(os.path.join(step, label, name)) as f:
                top1 = json.load(f)["top1"]
            assert float(row[f"eval/{probe}_{label}"]) == pytest.approx(top1) and 0 <= top1 <= 1
    assert row["state"] == "done" and row["note"] == ""
    assert "| eval/knn_label_appearance |" in (root / "results.md").read_text()
    assert (root / "results.png").read_bytes()[:4] == b"\x89PNG"

    # Evaluated runs are skipped; a missing result is computed again by --collect (the
    # embeddings are reused); a failing evaluation is the run's note.
    again = subprocess.run(command, env=SUB_ENV, capture_output=True, text=True)
    assert "[1/1] base: done already, skipped" in again.stdout and "evaluating" not in again.stdout
    os.remove(os.path.join(step, "label_motion", "linear_probe_video.json"))
    collected = subprocess.run([*command, "--collect"], env=SUB_ENV, capture_output=True, text=True)
    assert collected.returncode == 0 and "[1/1] base: evaluated: " in collected.stdout
    with open(root / "base" / "eval.log") as f:
        redone = [line.split(" -m twlv_jax ")[1].split()[0] for line in f if line.startswith("$ ")][-3:]
    assert redone == ["embed", "embed", "probe"]
    with open(os.path.join(step, "label_motion", "embed_val.json")) as f:
        assert json.load(f)["to_embed"] == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    train_rows = (videos / "train.csv").read_text().splitlines()[:4]
    (broken / "train.csv").write_text("\n".join(train_rows).replace("videos/", f"{videos}/videos/"))
    (broken / "val.csv").write_text("path,label_appearance,label_motion\nmissing.mp4,1,1\n")
    failed = subprocess.run([*command, f"--eval_input={broken}", "--eval=knn"], env=SUB_ENV,
                            capture_output=True, text=True)
    assert failed.returncode == 0, failed.stderr[-3000:]
    with open(root / "results.csv") as f:
        row = next(csv.DictReader(f))
    assert row["state"] == "done" and row["note"].startswith("evaluation failed: twlv embed: ")
    assert "1 of 1 files unreadable" in row["note"]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_gets_sigterm_when_the_sweep_is_killed():
    script = ("import subprocess; from twlv_jax.sweep.execute import _term_with_parent; "
              "p = subprocess.Popen(['sleep', '60'], start_new_session=True, "
              "preexec_fn=_term_with_parent); print(p.pid, flush=True); p.wait()")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert _alive(pid)
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
