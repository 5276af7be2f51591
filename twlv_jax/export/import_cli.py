"""`twlv import videomae|vjepa2|vjepa|umt|clip`: external weights into our models, strictly,
with a report.

    twlv import videomae --input hf_videomae/ --output imported/      # a student checkpoint
    twlv import videomae --input hf_videomae/ --output teacher.safetensors   # video teacher file
    twlv import vjepa2 --input hf_vjepa2/ --output imported/
    twlv import vjepa --input vitl16.pth.tar --output imported/     # original V-JEPA
    twlv import umt --input umt_b16.pth --output imported/          # original UMT
    twlv import clip --input hf_clip/ --output clip.safetensors --variant clip_b16

`videomae` reads a `VideoMAEModel` or `VideoMAEForPreTraining` folder (config.json plus
weights; `q_bias`/`v_bias` names accepted), `vjepa2` a `VJEPA2Model` or
`VJEPA2ForVideoClassification` folder, `vjepa` and `umt` those projects' own PyTorch
checkpoints (by key map, original.py), into our encoder: a checkpoint folder that
`twlv embed`, `twlv export` and `twlv train --config.init_from=DIR` take (strictly when it
holds every head of the run, a VideoMAE decoder or V-JEPA predictor; else with
--config.init_strict=false, the other heads start fresh), or with a .safetensors output
the weights file of `objective.video_teacher.weights`. `clip` writes the image teacher's
weights file (`teacher.weights`). Missing, unexpected and mis-shaped keys stop the import
unless each matches an --allow pattern; the report (JSON beside the output) lists them,
what was ignored (pretraining heads, text tower) and any position table resampled. With
torch and transformers installed, a VideoMAE or V-JEPA 2 folder import also runs the
parity check of export against the source model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from twlv_jax import models
from twlv_jax.eval.outputs import fail
from twlv_jax.export import files, hf_clip, original, parity, student, videomae, vjepa2
from twlv_jax.export.table import Report, import_params, prefixed
from twlv_jax.models import weights as weightlib

ENCODERS = {"videomae": videomae, "vjepa2": vjepa2}   # formats imported into our encoder
DECODER = "pixel.decoder."                             # our pixel decoder in the model's state


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twlv import", description=__doc__.split("\n\n")[0])
    p.add_argument("format", choices=(*ENCODERS, "vjepa", "umt", "clip"))
    p.add_argument("--input", required=True, help="Hugging Face folder or weights file")
    p.add_argument("--output", required=True,
                   help="checkpoint folder, or a .safetensors weights file")
    p.add_argument("--allow", action="append", default=[], metavar="PATTERN",
                   help="accept problems of keys matching this fnmatch pattern (repeatable)")
    p.add_argument("--variant", default="clip_b16", help="clip: the teacher variant")
    p.add_argument("--key", default="target_encoder", choices=("target_encoder", "encoder"),
                   help="vjepa: which encoder of the checkpoint becomes the student")
    p.add_argument("--frames", type=int, default=0,
                   help="umt: frames of its pretraining clips (0: UMT's grid, 8 x tubelet)")
    p.add_argument("--image_size", type=int, default=0,
                   help="umt: size of its pretraining clips (0: UMT's grid, 14 x patch)")
    return p


def _positions(fmt: str, model_cfg) -> str:
    grid = models.token_grid(model_cfg)
    if fmt == "vjepa2":
        return ("V-JEPA 2's 3-D rotary positions (pos_embed=rope3d), computed from each "
                f"input's grid ({grid} at the config's size), not stored")
    return (f"VideoMAE's fixed 1-D sin-cos table for the grid {grid} (pos_embed=sincos1d), "
            "computed, not stored")


def _decoder(args, hf_config: dict, state: dict) -> tuple[dict | None, list[str]]:
    """(our `objective.pixel` fields, notes) when the source's pretraining decoder goes into
    our pixel decoder: a VideoMAE checkpoint folder output from a folder holding one."""
    if args.format != "videomae" or "decoder.head.weight" not in state:
        return None, []
    if args.output.endswith(".safetensors"):
        return None, ["decoder not imported: a video teacher file holds the encoder only"]
    fields, why = videomae.decoder_fields(hf_config)
    if fields is None:
        return None, [why]
    return fields, [why, _init_note(args.output, "videomae",
                                    {f"pixel.{k}": v for k, v in fields.items()}, "decoder")]


def _init_note(output: str, preset: str, objective_fields: dict, heads: str) -> str:
    """How `twlv train` starts from an imported checkpoint with its heads."""
    flags = " ".join(f"--config.objective.{k}={v}" for k, v in objective_fields.items())
    return (f"twlv train --config.init_from={output} loads student and {heads} strictly with "
            f"--config.objective.preset={preset} {flags} and this model block")


def _convert(config, state: dict, encoder_rules, heads: dict, *, source: str, allow,
             ignore) -> tuple[dict, dict, Report]:
    """(student params, head params under the model's names, report): `state` through
    `encoder_rules(names)` into the student and `heads` {our prefix: rules(names)}."""
    # The student alone, or the whole model when heads come too (one build either way).
    fresh = (student.fresh_model(config) if heads
             else {f"student.{k}": v for k, v in student.fresh(config).items()})
    like = {k: v for k, v in fresh.items() if k.startswith(("student.", *heads))}
    rules = prefixed(encoder_rules({k.removeprefix("student.") for k in like
                                    if k.startswith("student.")}), "student.")
    for prefix, make in heads.items():
        rules += prefixed(make({k.removeprefix(prefix) for k in like if k.startswith(prefix)}),
                          prefix)
    loaded, report = import_params(state, rules, like, source=source, allow=allow, ignore=ignore)
    if report.ignored:
        report.ignored = [f"{len(report.ignored)} keys of pretraining/classification heads "
                          f"({', '.join(sorted({k.split('.')[0] for k in report.ignored}))})"]
    params = {k.removeprefix("student."): v for k, v in loaded.items() if k.startswith("student.")}
    return params, {k: v for k, v in loaded.items() if not k.startswith("student.")}, report


def _encoder(args) -> tuple[dict, str]:
    fmt = ENCODERS[args.format]
    hf_config = files.read_config(args.input)
    variant, fields, notes = fmt.model_fields(hf_config)
    state = fmt.normalize_keys(files.read_state(args.input))
    pixel, decoder_notes = _decoder(args, hf_config, state)
    config = (student.make_config(variant, fields, "videomae",
                                  {f"pixel.{k}": v for k, v in pixel.items()}) if pixel
              else student.make_config(variant, fields))
    heads = {DECODER: videomae.decoder_rules} if pixel else {}
    ignore = tuple(p for p in fmt.IGNORE if not (pixel and p in videomae.DECODER))
    params, heads, report = _convert(
        config, state, lambda names: fmt.rules(config.model, names), heads,
        source=files.weights_file(args.input), allow=args.allow, ignore=ignore)
    report.notes += [f"variant {variant}; positions: {_positions(args.format, config.model)}", *notes,
                     *decoder_notes]
    result = report.to_dict()
    _write(args, config, params, heads)
    if os.path.isdir(args.input):
        check = parity.run(config, params, args.format, args.input)
        check["loading_problems"] = {}   # the heads of a pretraining folder are not ours
        check["passed"] = check["max_abs_diff_tokens"] <= check["tolerance"]
        result["parity"] = check
        print(parity.summary(check))
    return result, "\n".join(report.lines())


def _original(args) -> tuple[dict, str]:
    if args.format == "vjepa":
        src = original.read_vjepa(args.input, args.key,
                                  predictor=not args.output.endswith(".safetensors"))
    else:
        src = original.read_umt(args.input, args.frames, args.image_size)
    config = student.make_config(src.variant, src.fields, src.objective, src.objective_fields)
    params, heads, report = _convert(config, src.state, src.encoder_rules, src.heads,
                                     source=files.weights_file(args.input), allow=args.allow,
                                     ignore=src.ignore)
    report.notes += [f"variant {src.variant}; {args.format}: checked by key names and shapes, no "
                     "reference model was run", *src.notes]
    if src.heads:
        report.notes.append(_init_note(args.output, src.objective, src.objective_fields, "heads"))
    _write(args, config, params, heads)
    return report.to_dict(), "\n".join(report.lines())


def _write(args, config, params: dict, heads: dict) -> None:
    """The student (and heads) as a checkpoint folder, or a video teacher weights file."""
    if args.output.endswith(".safetensors"):
        weightlib.save(weightlib.unflatten(params), args.output)
    else:
        step = student.write(args.output, config, params, source=os.path.abspath(args.input),
                             heads=heads)
        print(f"checkpoint step folder: {step}")


def _clip(args) -> tuple[dict, str]:
    if not args.output.endswith(".safetensors"):
        raise ValueError(f"--output {args.output}: the image teacher is written as a "
                         ".safetensors weights file")
    path = files.weights_file(args.input)
    params, report = hf_clip.import_clip(path, args.variant, allow=args.allow)
    weightlib.save(params, args.output)
    report.notes.append(f"teacher variant {args.variant}; use --config.teacher.weights={args.output}")
    return report.to_dict(), "\n".join(report.lines())


def _run(args) -> int:
    print(f"twlv import {args.format}: {args.input} -> {args.output}")
    result, text = {"clip": _clip, "vjepa": _original, "umt": _original}.get(
        args.format, _encoder)(args)
    print(text)
    path = (os.path.join(args.output, "import_report.json") if os.path.isdir(args.output)
            else os.path.splitext(args.output)[0] + ".import_report.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.output}; report: {path}")
    return 0 if result.get("parity", {}).get("passed", True) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `twlv import`; 2: bad arguments, inputs or key problems, 1: parity failed."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        return fail("import", error)
