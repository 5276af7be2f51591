r"""`twlv plan`: does a config's train step fit a target, and how fast should it go?

    twlv plan --config configs/pretrain.py:variant=L --target tpu:v5p:4x4x4
    twlv plan --config configs/pretrain.py:variant=tiny --target cpu:8 --config.mesh.rules=dp

Compiles the real train step ahead of time for the target's devices (TPU topologies
need libtpu: `make plan-tpu`) without running it, and prints per device: parameter,
optimizer, EMA, teacher and batch bytes, temporaries and the total against the chip's
memory, then the analytic FLOPs per step and the step time and clips/s they imply at
--mfu of the chip's peak. When the step does not fit, it compiles full remat and more
`train.microbatches` (smaller per-chip microbatches, the same global batch) and prints the
first that fits.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from twlv_jax import config as cfglib
from twlv_jax.plan import targets as targetlib

KINDS = [("parameters", "parameters (float32)"), ("optimizer", "optimizer state"),
         ("ema", "EMA student"), ("teachers", "frozen teachers"), ("batch", "batch (uint8 clips)"),
         ("arguments", "arguments (the above and the step's scalars)"),
         ("temporaries", "temporaries"), ("code", "generated code")]
MAX_SUGGESTIONS = 4


def parse(argv: list[str]):
    overrides, rest = cfglib.split_cli(argv)
    parser = argparse.ArgumentParser(prog="twlv plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="FILE[:ARGS], e.g. configs/pretrain.py:variant=L")
    parser.add_argument("--target", required=True, help=targetlib.USAGE)
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="model FLOPs utilisation for the step time (default 0.4)")
    parser.add_argument("--memory", type=float,
                        help="GiB per device to plan against instead of the chip's")
    parser.add_argument("--no_suggest", action="store_true",
                        help="do not compile remat and microbatch variants when it does not fit")
    return parser.parse_args(rest), overrides


def report(plan, config, mfu: float, peak: float) -> str:
    t, b = plan.target, plan.bytes
    batch = config.train.batch_size
    unit, scale = ("GiB", 2**30) if b["total"] >= 2**30 else ("MiB", 2**20)
    lines = [f"{t.text}: {t.num_devices} devices, mesh "
             + " ".join(f"{k}={v}" for k, v in plan.mesh.items())
             + f", rules {config.mesh.rules}, remat {config.model.remat}, batch {batch} "
             f"({batch / t.num_devices:g} per device); compiled in {plan.compile_s:.1f} s",
             f"per device {unit:>45}"]
    lines += [f"  {label:<44}{b[kind] / scale:9.3f}" for kind, label in KINDS]
    lines.append(f"  {'total (arguments + outputs - donated + temps)':<44}{b['total'] / scale:9.3f}"
                 f"  of {t.memory / scale:.2f} ({b['total'] / t.memory:.1%})")
    per_device = plan.flops / t.num_devices
    step = per_device / (peak * mfu)
    lines.append(f"FLOPs per step {plan.flops:.3g} ({per_device:.3g} per device, analytic); at "
                 f"{mfu:.0%} MFU of {peak / 1e12:.4g} TFLOP/s per device: {step:.3g} s per step, "
                 f"{batch / step:.4g} clips/s")
    return "\n".join(lines)


def candidates(config, num_devices: int) -> list[tuple[str, int]]:
    """(remat, microbatches) to try when the step does not fit, the global batch kept: full
    remat first, then doubling `train.microbatches` (halving the per-chip microbatch) with the
    config's remat and with full remat, down to one clip per device and microbatch."""
    data, fsdp, _ = cfglib.mesh_shape(config.mesh.shape, num_devices)
    per_device = config.train.batch_size // (data * fsdp)
    remats = list(dict.fromkeys([config.model.remat, "full"]))
    micro, result = config.train.microbatches, []
    while micro <= per_device and per_device % micro == 0:
        result += [(r, micro) for r in remats]
        micro *= 2
    original = (config.model.remat, config.train.microbatches)
    return [c for c in result if c != original][:MAX_SUGGESTIONS]


def suggest(config, target, devices) -> str:
    """The first remat/microbatches variant that compiles and fits, as overrides; or why none."""
    from twlv_jax.plan.compile import DoesNotFit, compile_plan, size

    tried = []
    for remat, micro in candidates(config, len(devices)):
        variant = config.copy_and_resolve_references()
        variant.model.remat, variant.train.microbatches = remat, micro
        tried.append(f"remat={remat} microbatches={micro}")
        try:
            plan = compile_plan(variant, target, devices)
        except DoesNotFit:
            continue
        return (f"fits with --config.model.remat={remat} --config.train.microbatches={micro} "
                f"(compiled: {size(plan.total)} per device)")
    return "none of " + ", ".join(tried) + " fits" if tried else "nothing smaller to try"


def main(argv: list[str]) -> int:
    try:
        args, overrides = parse(argv)
        target = targetlib.parse(args.target)
        if "jax" not in sys.modules:        # settings JAX reads when it starts
            if target.platform == "cpu":
                os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                           f"platform_device_count={target.num_devices}").strip()
            else:   # compile-only executables cannot be read back from the persistent cache
                os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
            if target.platform == "tpu":
                # Compile-only: JAX stays on the CPU and no chip is opened, so libtpu's
                # one-process lock (/tmp/libtpu_lockfile) need not keep other plans out.
                os.environ.setdefault("JAX_PLATFORMS", "cpu")
                os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        config = cfglib.build(args.config, overrides)
    except (cfglib.ConfigError, targetlib.TargetError) as error:
        print(f"twlv plan: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    from twlv_jax.plan.compile import DoesNotFit, compile_plan
    from twlv_jax.train import flops

    if args.memory:
        target = dataclasses.replace(target, memory=args.memory * 2**30)
    peak = target.peak or flops.measured_peak(config.model.dtype) / target.num_devices
    print(f"twlv plan: compiling the train step of {args.config} for {target.text}", flush=True)
    try:
        devices = targetlib.devices(target)
        plan = compile_plan(config, target, devices)
    except DoesNotFit as error:
        if error.plan is not None:
            print(report(error.plan, config, args.mfu, peak))
        hint = "" if args.no_suggest else "; " + suggest(config, target, devices)
        print(f"twlv plan: does not fit on {target.text}: {error}{hint}", file=sys.stderr)
        return 2
    except (cfglib.ConfigError, targetlib.TargetError) as error:
        print(f"twlv plan: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(report(plan, config, args.mfu, peak))
    return 0
