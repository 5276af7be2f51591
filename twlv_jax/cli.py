"""`twlv <verb> ...`: one command line for training, data, and checkpoints.

Each verb lives in its own module with a `main(argv) -> int`; it is imported only when
called, so `twlv --help` is instant and does not start JAX.

Errors: a verb prints the errors it expects (bad input, a stop the run chose) as one
line. Anything else is one line too, naming the exception, with the full traceback
written to a file; `--debug` (anywhere on the command line) prints it instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import traceback

# verb -> (module with main(argv), one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("twlv_jax.demo", "pretrain on the synthetic set and show that it learns (one table)"),
    "train": ("twlv_jax.train.loop", "pretrain an encoder: --config FILE[:ARGS] --workdir DIR"),
    "data": ("twlv_jax.data.cli", "video data: synth | build | prepare"),
    "inspect": ("twlv_jax.train.inspect", "show a checkpoint's step, config, versions and params"),
    "embed": ("twlv_jax.eval.embed", "embed videos in the official TWLV-I file layout"),
    "knn": ("twlv_jax.eval.knn", "k-NN top-1 of embedding folders (official protocol)"),
    "probe": ("twlv_jax.eval.probes", "linear probe of embedding folders, or attentive probe"),
    "motion": ("twlv_jax.eval.motion", "forward vs time-reversed separability, embedding plots"),
    "export": ("twlv_jax.export.export_cli", "a checkpoint's encoder for transformers/PyTorch, with parity"),
    "import": ("twlv_jax.export.import_cli", "HF VideoMAE or CLIP weights into a checkpoint or teacher"),
    "sweep": ("twlv_jax.sweep.cli", "run the sweep a config file declares (get_hyper), tabulate results"),
    "plan": ("twlv_jax.plan.cli", "compile the train step for a TPU/GPU/CPU target: memory, FLOPs, speed"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: twlv <verb> [args] [--debug]  (twlv <verb> --help for a verb's options; "
             "--debug: full tracebacks)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    return "\n".join(lines)


def _traceback_file(verb: str) -> str:
    """Writes the current exception's traceback to a file; returns its path."""
    fd, path = tempfile.mkstemp(prefix=f"twlv-{verb}-", suffix=".traceback")
    with os.fdopen(fd, "w") as f:
        traceback.print_exc(file=f)
    return path


def _quiet_stdout() -> None:
    """After a closed pipe (`twlv inspect | head`): later writes and the final flush go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run_verb(verb: str, rest: list[str], *, debug: bool) -> int:
    """Runs one verb; an error it did not expect becomes one line (see the module docstring)."""
    try:
        module = importlib.import_module(VERBS[verb][0])
        return module.main(rest) or 0
    except BrokenPipeError:
        _quiet_stdout()
        return 141                          # 128 + SIGPIPE, as a shell reports it
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"twlv {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        first = (str(error).strip().splitlines() or [""])[0][:500]
        print(f"twlv {verb}: {type(error).__name__}: {first} (traceback: "
              f"{_traceback_file(verb)}; --debug prints it)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from twlv_jax import __version__
        print(f"twlv-jax {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"twlv: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_verb(verb, rest, debug=debug)
