r"""`twlv sweep`: the runs a config file's get_hyper(h) declares, trained and tabulated.

    twlv sweep configs/ablations/targets.py:setting=cpu --workdir runs/abl_targets \
        --config.data.path=runs/demo_data/train.csv --config.train.probe_path=runs/demo_data

Every run's config is built and validated before any run starts. Each run trains in
ROOT/NAME (NAME from its overrides); runs go one after another in subprocesses of
`twlv train`, or are handed to a launcher (launch/<launcher>.sh). Rerunning the command
skips finished runs and resumes the others. When the sweep asks for an evaluation step
(get_sweep_eval in the config file, or --eval), each finished run's last checkpoint is
embedded and scored with `twlv knn` / `twlv probe`. ROOT/results.md, results.csv and
results.png gather the final losses, throughput, online-probe and evaluation scores;
--collect rebuilds them from the workdirs (runs on a cluster) with each run's state,
evaluating finished runs here first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from twlv_jax import config as cfglib
from twlv_jax import paths as pathlib
from twlv_jax.sweep import evaluate, execute, results
from twlv_jax.sweep.evaluate import EvalError
from twlv_jax.sweep.expand import Run, SweepError, expand


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    overrides, rest = cfglib.split_cli(argv)
    parser = argparse.ArgumentParser(prog="twlv sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="--config.KEY=VALUE applies to every run (the "
                                            "sweep's own value wins for a swept key)")
    parser.add_argument("spec", metavar="FILE[:ARGS]", help="a config file with get_hyper(h)")
    parser.add_argument("--workdir", required=True, help="ROOT: one folder per run, and the results")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the runs and their commands; write and run nothing")
    parser.add_argument("--launcher", choices=execute.LAUNCHERS, default="local")
    parser.add_argument("--launcher_args", default="",
                        help="options for launch/<launcher>.sh, e.g. '--tpu=pod --zone=us-east5-a'")
    parser.add_argument("--only", help="NAME,...: these runs only")
    parser.add_argument("--collect", action="store_true",
                        help="only rebuild the results table from the runs' workdirs (and "
                             "evaluate finished runs that were not yet)")
    parser.add_argument("--eval", metavar="PROBES",
                        help="evaluation step after each run: knn, linear, knn,linear, or none "
                             "(default: the config file's get_sweep_eval, else none)")
    parser.add_argument("--eval_input", metavar="FOLDER",
                        help="folder with train and val manifests to evaluate on (default: "
                             "get_sweep_eval's input, else each run's train.probe_path)")
    parser.add_argument("--devices", type=int,
                        help="devices each run gets, for the mesh checks (default: this "
                             "machine's for local, what the slurm/xpk options give, else what "
                             "each mesh fixes)")
    return parser.parse_args(rest), overrides


def select(runs: list[Run], only: str | None) -> list[Run]:
    if not only:
        return runs
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {r.name for r in runs}]
    if unknown:
        raise SweepError(f"--only: no run named {unknown[0]!r}; runs: "
                         f"{', '.join(r.name for r in runs)}")
    return [r for r in runs if r.name in wanted]


def describe(runs: list[Run], root: str) -> str:
    lines = [f"{len(runs)} run(s) under {root}:"]
    for i, run in enumerate(runs, 1):
        own = " ".join(f"{k[len('config.'):] if k.startswith('config.') else k}={v!r}"
                       for k, v in run.values.items())
        lines.append(f"  [{i}] {run.name}: {own}")
    return "\n".join(lines)


def write_runs(root: str, spec: str, runs: list[Run]) -> None:
    """ROOT/sweep.json (the sweep) and ROOT/NAME/sweep_run.json (each resolved config)."""
    pathlib.makedirs(root)
    entries = [{"name": r.name, "spec": r.spec, "overrides": r.cli_overrides(), "values": r.values}
               for r in runs]
    with pathlib.atomic_write(pathlib.join(root, "sweep.json"), "w") as f:
        json.dump({"spec": spec, "runs": entries}, f, indent=2, default=str)
    for run, entry in zip(runs, entries, strict=True):
        pathlib.makedirs(execute.run_dir(root, run))
        with pathlib.atomic_write(pathlib.join(execute.run_dir(root, run), "sweep_run.json"), "w") as f:
            json.dump({**entry, "config": run.config.to_dict()}, f, indent=2, default=str)


def final_step(config) -> int | str:
    """The step a run ends at, when its length is given in steps (else 'LAST')."""
    amount, unit = cfglib.parse_duration(config.train.steps)
    return int(amount) if unit == "steps" else "LAST"


def dry_run(args, runs: list[Run], root: str) -> None:
    print(describe(runs, root))
    for run in runs:
        if args.launcher == "local":
            print(shlex.join(execute.train_command(root, run)))
        else:
            subprocess.run(execute.launcher_command(args.launcher, root, run,
                                                    shlex.split(args.launcher_args), True),
                           check=True)
        if run.evaluation:
            for command in evaluate.commands(execute.run_dir(root, run), run.evaluation,
                                             final_step(run.config)):
                print(shlex.join(command))


def needs_evaluation(root: str, run: Run) -> bool:
    return run.evaluation is not None and not evaluate.evaluated(execute.run_dir(root, run),
                                                                 run.evaluation)


def run_local(runs: list[Run], root: str, title: str, *, train: bool = True) -> str | None:
    """Trains the runs that are not done (unless not `train`) and evaluates the finished
    ones that the sweep's evaluation step has not scored; returns the signal that stopped
    the sweep, if any."""
    with execute.LocalRunner(root) as runner:
        for i, run in enumerate(runs, 1):
            tag, folder = f"[{i}/{len(runs)}] {run.name}", execute.run_dir(root, run)
            state, _ = execute.state_of(folder, run.config)
            if runner.stopped:
                break
            trains = train and state != "done"
            if trains:
                how = "resuming" if state != "not started" else "starting"
                print(f"{tag}: {how} (log: {os.path.join(folder, 'train.log')})", flush=True)
                state, detail = runner.run(run)
                print(f"{tag}: {state}" + (f" ({detail})" if detail else ""), flush=True)
            pending = state == "done" and needs_evaluation(root, run)
            if train and not trains:
                print(f"{tag}: done already" + ("" if pending else ", skipped"))
            if pending and not runner.stopped:
                print(f"{tag}: evaluating (log: {os.path.join(folder, 'eval.log')})", flush=True)
                why = runner.evaluate(run)
                found = evaluate.scores(folder, run.evaluation)
                print(f"{tag}: {why}" if why else f"{tag}: evaluated: " + ", ".join(
                    f"{k[len('eval/'):]} {v:.3f}" for k, v in found.items()), flush=True)
            if trains or pending:                   # the tables so far; `main` collects at the end
                results.collect(root, runs, title)
        return runner.stopped


def hand_over(args, runs: list[Run], root: str) -> None:
    for i, run in enumerate(runs, 1):
        folder = execute.run_dir(root, run)
        if execute.state_of(folder, run.config)[0] == "done":
            print(f"[{i}/{len(runs)}] {run.name}: done already, skipped")
            continue
        command = execute.launcher_command(args.launcher, root, run,
                                           shlex.split(args.launcher_args), False)
        print(f"[{i}/{len(runs)}] {run.name}: handing to {args.launcher}", flush=True)
        subprocess.run(command, check=True)
        execute.write_status(folder, "submitted", f"launcher {args.launcher}")


def main(argv: list[str]) -> int:
    try:
        args, overrides = parse(argv)
        root = pathlib.absolute(args.workdir)
        if pathlib.is_remote(root) and args.launcher == "local" and not args.collect:
            raise SweepError(f"--workdir {root}: local runs train in a local folder (a bucket "
                             "serves runs handed to a cluster launcher, and --collect)")
        devices = args.devices or execute.launcher_devices(args.launcher,
                                                            shlex.split(args.launcher_args))
        if devices is None and args.launcher == "local":
            import jax
            devices = jax.device_count()
        request = evaluate.requested(args.spec, args.eval, args.eval_input)
        if request and pathlib.is_remote(root):
            raise SweepError(f"--workdir {root}: the evaluation step reads checkpoints from a "
                             "local (or mounted) folder; give --eval none for a bucket")
        runs = select(expand(args.spec, overrides, num_devices=devices, evaluation=request),
                      args.only)
    except (cfglib.ConfigError, SweepError, EvalError) as error:
        print(f"twlv sweep: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.dry_run:
        dry_run(args, runs, root)
        return 0
    title = f"twlv sweep {os.path.basename(args.spec)}"
    stopped = None
    if args.collect:
        if request:
            stopped = run_local(runs, root, title, train=False)
    else:
        write_runs(root, args.spec, runs)
        if args.launcher == "local":
            stopped = run_local(runs, root, title)
        else:
            hand_over(args, runs, root)
    table, paths = results.collect(root, runs, title)
    states = {}
    for row in table:
        states[row["state"]] = states.get(row["state"], 0) + 1
    print(f"twlv sweep: {len(table)} run(s): "
          + ", ".join(f"{n} {s}" for s, n in states.items()))
    for path in paths:
        print(f"  {path}")
    if stopped:
        print(f"twlv sweep: stopped by {stopped}; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0
