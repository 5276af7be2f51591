"""`twlv <verb> ...`: one command line for training, data, and checkpoints.

Each verb lives in its own module with a `main(argv) -> int`; it is imported only when
called, so `twlv --help` is instant and does not start JAX.
"""

from __future__ import annotations

import importlib
import sys

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
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: twlv <verb> [args]  (twlv <verb> --help for a verb's options)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    module = importlib.import_module(VERBS[verb][0])
    return module.main(rest) or 0
