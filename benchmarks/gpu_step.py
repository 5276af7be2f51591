"""bf16 train-step time, clips/s and MFU of ViT-B and ViT-L on one GPU, for the videomae and twlv
objectives, with cuDNN and XLA attention and with and without rematerialisation.

    PYTHONUNBUFFERED=1 OUT=/tmp/out python3 benchmarks/gpu_step.py [--budget_s 270] [--steps 10]
    python3 benchmarks/gpu_step.py --dry_run          # tiny sizes, 1 step, runs on CPU
    ... --profile    # also trace one step of the first case and summarise what it spends time on
    ... --first 3 --override model.scan=false       # the first 3 cases with one config change
    ... --sizes L --first 1                         # ViT-L videomae, cuDNN, no remat only

Writes a markdown table to $OUT/gpu_step.md (after every case, so a cut-off run keeps what it
measured) and prints it. Cases run in priority order until the time budget, compiles included,
would be exceeded; the rest are listed as skipped. A case that runs out of device memory or fails
is listed with its error. MFU: analytic model FLOPs (`twlv_jax.train.flops.step_flops`) over the
step time and the chip's dense bf16 peak (`flops.PEAKS`: 989 TFLOP/s for H100 and H200).

The step's import path needs JAX, Flax, Optax, safetensors and ml-collections only (no Grain,
PyAV or PyTorch).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import step_profile  # noqa: E402

from twlv_jax import config as cfglib  # noqa: E402
from twlv_jax.parallel.mesh import batch_sharding, make_mesh  # noqa: E402
from twlv_jax.train import flops  # noqa: E402
from twlv_jax.train import state as statelib  # noqa: E402
from twlv_jax.train import step as steplib  # noqa: E402

BATCH = {"B": 32, "L": 16, "tiny": 2}
PROFILE_NOTE = ("One step of the first case measured, traced with `jax.profiler.trace` after its "
                "timed steps; op time is the GPU kernels' time. Inside CUDA command buffers every "
                "kernel names the buffer rather than its HLO op: fusion kernels are matched to their "
                "fusions by name, and cuBLAS, cuDNN and copy kernels are counted by library (part: "
                '"no HLO op"). ' + step_profile.NOTE)


@dataclasses.dataclass(frozen=True)
class Case:
    size: str
    objective: str
    attention: str
    remat: str
    batch: int

    @property
    def label(self) -> str:
        return f"{self.size} {self.objective} attention={self.attention} remat={self.remat} x{self.batch}"


def cases(sizes: list[str], batch: int) -> list[Case]:
    """Most informative first: the attention choice on B, the twlv objective, then L, then remat."""
    b, large = sizes[0], sizes[-1]
    order = [(b, "videomae", "cudnn", "none"), (b, "videomae", "xla", "none"),
             (b, "twlv", "cudnn", "full"), (b, "twlv", "xla", "full"),
             (large, "videomae", "cudnn", "full"), (large, "twlv", "cudnn", "full"),
             (b, "videomae", "cudnn", "full"), (b, "twlv", "cudnn", "none"),
             (large, "videomae", "xla", "full"), (large, "videomae", "cudnn", "none"),
             (large, "twlv", "xla", "full"), (large, "twlv", "cudnn", "none")]
    unique = list(dict.fromkeys(order))
    return [Case(s, o, a, r, batch or BATCH[s]) for s, o, a, r in unique]


def build(case: Case, overrides: list[tuple[str, str]]):
    """Config, setup, state and teachers for one case on the first device."""
    config = cfglib.build(f"configs/pretrain.py:variant={case.size},objective={case.objective}", [
        ("train.batch_size", str(case.batch)), ("mesh.shape", "1,1,1"), ("model.dtype", "bfloat16"),
        ("model.remat", case.remat), ("model.attention", case.attention), ("teacher.allow_random", "true"),
        *overrides])
    mesh = make_mesh("1,1,1", jax.devices()[:1])
    setup = statelib.build(config, mesh, total_steps=1000, warmup_steps=10)
    return config, setup, statelib.init_state(setup), statelib.init_teachers(setup, {})


def measure(case: Case, overrides: list[tuple[str, str]], steps: int, warmup: int, peak: float,
            profile: bool = False) -> dict:
    """Compiles the step, runs `warmup` steps, then `steps` back to back (one sync at the end);
    with `profile`, traces one more step and summarises it (raw trace and module kept in $OUT)."""
    start = time.perf_counter()
    config, setup, state, teachers = build(case, overrides)
    m = config.model
    video = np.random.RandomState(0).randint(0, 256, (case.batch, m.frames, m.image_size, m.image_size, 3),
                                             dtype=np.uint8)
    video = jax.device_put(video, batch_sharding(setup.mesh))
    poison = np.float32(0.0)
    compiled = steplib.jit_train_step(setup).lower(state, teachers, video, poison).compile()
    memory = compiled.memory_analysis()
    compile_s = time.perf_counter() - start
    for _ in range(1 + warmup):
        state, metrics = compiled(state, teachers, video, poison)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, teachers, video, poison)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / steps
    model_flops = flops.step_flops(config, setup.objective)
    gib = None
    if memory is not None:
        gib = (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes) / 2**30
    result = {"compile_s": compile_s, "step_s": seconds, "clips_per_s": case.batch / seconds,
              "tflops": model_flops / seconds / 1e12, "mfu": model_flops / seconds / peak,
              "memory_gib": gib, "loss": float(metrics["loss"])}
    if profile:
        def one_step() -> float:
            nonlocal state
            begin = time.perf_counter()
            state, out = compiled(state, teachers, video, poison)
            jax.block_until_ready((state, out))
            return time.perf_counter() - begin
        try:
            result["profile"] = step_profile.profile_step(compiled, one_step, os.environ.get("OUT"))
        except Exception as error:  # the case's numbers stand without it
            print(f"profile failed: {type(error).__name__}: {error}", flush=True)
    return result


def estimate(case: Case, spent: dict[Case, float]) -> float:
    """Expected seconds for a case: the slowest measured case of its size and objective, else of
    its objective (x2 for a larger size), else 60 s."""
    same = [s for c, s in spent.items() if (c.size, c.objective) == (case.size, case.objective)]
    similar = [s for c, s in spent.items() if c.objective == case.objective]
    return max(same) if same else 2 * max(similar) if similar else 60.0


def row(case: Case, result: dict) -> str:
    if "error" in result:
        return f"| {case.label} | {result['error']} | | | | | | |"
    memory = f"{result['memory_gib']:.1f}" if result["memory_gib"] is not None else "-"
    return (f"| {case.label} | {result['step_s'] * 1e3:.1f} | {result['clips_per_s']:.1f} | "
            f"{result['tflops']:.0f} | {result['mfu']:.1%} | {memory} | {result['compile_s']:.0f} | "
            f"{result['loss']:.3f} |")


def table(header: list[str], rows: list[str], skipped: list[Case], profiles: dict[Case, dict]) -> str:
    lines = [*header, "", "| case | step (ms) | clips/s | model TFLOP/s | MFU | memory (GiB) | "
             "compile + init (s) | loss |", "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
    lines += [f"| {case.label} | skipped (time budget) | | | | | | |" for case in skipped]
    if profiles:
        lines += ["", "## Profile", "", PROFILE_NOTE, *step_profile.profile_section(profiles)]
    return "\n".join(lines) + "\n"


def error_text(error: Exception) -> str:
    text = str(error).replace("|", "/").replace("\n", " ")
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return "out of device memory"
    return f"failed: {type(error).__name__}: {text[:160]}"


def write(path: str | None, text: str) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_s", type=float, default=270.0,
                        help="wall-clock budget for all cases, compiles included")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the compiling one")
    parser.add_argument("--batch", type=int, default=0, help="clips per step (default: B 32, L 16)")
    parser.add_argument("--sizes", default="B,L", help="model sizes: the base one, then the large one")
    parser.add_argument("--first", type=int, default=0, help="run only the first N cases (0: all)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every case (repeatable), e.g. model.scan=false")
    parser.add_argument("--dry_run", action="store_true", help="tiny model, batch 2, 1 step (CPU check)")
    parser.add_argument("--profile", action="store_true",
                        help="trace one step of the first case measured and add what it spends time on")
    default_out = os.path.join(os.environ["OUT"], "gpu_step.md") if os.environ.get("OUT") else None
    parser.add_argument("--out", default=default_out, help="markdown output (default: $OUT/gpu_step.md)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sizes = ["tiny"] if args.dry_run else args.sizes.split(",")
    steps, warmup = (1, 0) if args.dry_run else (args.steps, args.warmup)
    device = jax.devices()[0]
    peak, source = flops.peak_flops("bfloat16")
    overrides = [tuple(kv.split("=", 1)) for kv in args.override]
    header = ["# Train step on one accelerator (bf16)", "",
              f"Device: {device.device_kind} ({device.platform}); JAX {jax.__version__}; "
              f"Python {platform.python_version()}; peak {peak / 1e12:.0f} TFLOP/s ({source}).",
              f"Step: mean of {steps} steps run back to back after {warmup} warm-up steps (one sync at "
              "the end). Memory: XLA's memory analysis of the compiled step (arguments + outputs + "
              "temporaries - donated). Defaults of configs/pretrain.py otherwise (drop path 0.1, "
              "random teacher weights)" + "".join(f"; {k}={v}" for k, v in overrides) + "."]
    print("\n".join(header), flush=True)
    start, rows, skipped, spent, profiles = time.perf_counter(), [], [], {}, {}
    todo = cases(sizes, args.batch)[:args.first or None]
    while todo:
        case = todo.pop(0)
        elapsed = time.perf_counter() - start
        if elapsed + estimate(case, spent) > args.budget_s:
            skipped.append(case)
            continue
        print(f"[{elapsed:5.0f} s] {case.label} ...", flush=True)
        try:
            result = measure(case, overrides, steps, warmup, peak, profile=args.profile and not profiles)
        except Exception as error:  # one case's failure (OOM, unsupported attention) is a row
            result = {"error": error_text(error)}
        gc.collect()
        jax.clear_caches()
        spent[case] = time.perf_counter() - start - elapsed
        if result.get("profile", {}).get("total_ms"):
            profiles[case] = result["profile"]
        rows.append(row(case, result))
        print(rows[-1], flush=True)
        write(args.out, table(header, rows, skipped + todo, profiles))
    text = table(header, rows, skipped, profiles)
    print("\n" + text, flush=True)
    write(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
