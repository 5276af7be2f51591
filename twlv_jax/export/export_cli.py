"""`twlv export hf|torch|npz`: a checkpoint's student encoder for PyTorch, with a parity report.

    twlv export hf --checkpoint runs/demo --output exported/ [--input val.csv] [--form auto]
    twlv export torch --checkpoint runs/demo --output encoder.safetensors
    twlv export npz --checkpoint runs/demo --output encoder.npz

`hf` writes a Hugging Face folder: `VideoMAEModel` when the config is exactly expressible
in it, else a self-contained remote-code model (docs/export.md). `torch` and `npz` write
the flat PyTorch-named state dict. Every export ends with a parity report (ours vs the
exported model on the same clips), saved as JSON next to the weights; the exit status is 1
when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from twlv_jax.eval.outputs import fail
from twlv_jax.export import hf, parity, student
from twlv_jax.export.table import ConversionError

KINDS = ("hf", "torch", "npz")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twlv export", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS, help="hf: a transformers folder; torch: safetensors; "
                   "npz: numpy archive")
    p.add_argument("--checkpoint", required=True, help="workdir, its checkpoints/ or a step folder")
    p.add_argument("--output", required=True, help="folder (hf) or file (torch, npz)")
    p.add_argument("--input", default="", help="manifest or folder: parity on decoded clips "
                   "(default: random clips)")
    p.add_argument("--form", choices=("auto", "videomae", "custom"), default="auto",
                   help="hf form; auto: VideoMAEModel when exactly expressible, else custom")
    p.add_argument("--clips", type=int, default=2, help="clips in the parity check")
    p.add_argument("--tolerance", type=float, default=parity.TOLERANCE,
                   help="max |tokens diff| of the parity check")
    return p


def _parity_path(kind: str, output: str) -> str:
    if kind == "hf":
        return os.path.join(output, "parity.json")
    return os.path.splitext(output)[0] + ".parity.json"


def _run(args) -> int:
    if args.kind == "npz" and not args.output.endswith(".npz"):
        raise ValueError(f"--output {args.output}: an npz export needs a .npz file name")
    if args.kind == "torch" and not args.output.endswith(".safetensors"):
        raise ValueError(f"--output {args.output}: a torch export needs a .safetensors file name")
    if args.kind == "hf" and os.path.isfile(os.path.join(args.output, "model.safetensors")):
        raise FileExistsError(f"{args.output} already holds a model; choose a new folder")
    print(f"twlv export {args.kind}: {args.checkpoint} -> {args.output}")
    config, params = student.read(args.checkpoint)
    model_cfg = config.model
    if any(n.startswith("pooler.") for n in params):
        raise ConversionError("the attentive pooler has no PyTorch mapping yet")
    if args.kind == "hf":
        form, why = hf.choose_form(model_cfg, set(params), args.form)
        print(f"form: {form}: {why}")
        hf.write_hf(args.output, model_cfg, params, form)
        fields = None
    else:
        form, why = args.kind, "flat state dict with PyTorch names (docs/export.md)"
        hf.write_flat(args.output, model_cfg, params, args.kind)
        fields = {k: v for k, v in hf.custom_config(model_cfg, set(params)).items()
                  if k not in ("model_type", "architectures", "auto_map", "torch_dtype")}
    report = parity.run(config, params, form, args.output, manifest=args.input or None,
                        count=args.clips, tolerance=args.tolerance, fields=fields)
    report.update(checkpoint=os.path.abspath(args.checkpoint), why=why)
    path = _parity_path(args.kind, args.output)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(parity.summary(report))
    print(f"wrote {args.output} ({form}); parity report: {path}")
    return 0 if report["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `twlv export`; 2: bad arguments or inputs, 1: parity failed."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        return fail("export", error)
