"""Train-step throughput and model FLOPs utilisation (MFU): our JAX step against Hugging Face
`VideoMAEForPreTraining` (PyTorch) on the same work, our step against two variants of it (XLA's
attention, the layer scan), and a profile of what bounds the step.

    .venv/bin/python benchmarks/train_step.py [--sizes tiny,S,B] [--precisions float32,bfloat16]
        [--objectives videomae,twlv] [--batch N] [--steps N] [--quick] [--baseline DIR] [--out FILE]

Writes benchmarks/results/train_step.md and the CPU train-step section of BENCHMARKS.md (with
--out: FILE only), and prints the report.

Every case (one model, objective, precision, variant) runs in a worker process of its own
(`workers.py`), so each has its own memory and threads. The cases that are compared with each
other form a group: their workers are alive together and the parent asks each for one step in
turn, round after round (who goes first alternates), so that they share the load of this shared
machine. Step times are medians of the
timed steps; the compiling call and `--warmup` more steps are not timed. MFU is the analytic
model FLOPs of a step (`twlv_jax.train.flops.step_flops`) over the step time and the matmul peak
(`flops.measured_peak`: 2048^3, float32 accumulation), measured between the steps of the same
run; the best of those measurements is used.

Our step: model.attention=blockwise (what the default, `auto`, picks on CPUs:
`twlv_jax/models/cpu_kernels.py`) and model.scan=false (layers unrolled, faster on XLA's CPU
backend than the layer scan of the config default). On the largest size the same step also runs
with one override changed, side by side in the same groups: model.attention=xla
(`jax.nn.dot_product_attention(implementation="xla")`, the library's behaviour before blockwise
attention) and model.scan=true (the config default). With `--baseline DIR`, our step as another
checkout of the project (a git worktree of an earlier commit, say) has it runs side by side with
ours in every group: a before/after comparison under the same load.

The profile (`step_profile.py`) traces one step of ours per objective on the largest size and
attributes its ops by the step's `jax.named_scope` names.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np
import step_profile
import workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_step.md")
INDEX = os.path.join(ROOT, "BENCHMARKS.md")
# Our step: the attention the library picks on CPUs, layers unrolled.
OURS = (("model.attention", "blockwise"), ("model.scan", "false"))
# Variants of our step on the largest size: one override each (model.KEY=VALUE).
VARIANTS = ("attention=xla", "scan=true")
BASELINE = "baseline"
# Default batch (clips) per size; the twlv objective runs a frozen CLIP-B and an EMA encoder too.
BATCH = {"videomae": {"tiny": 8, "S": 2, "B": 2}, "twlv": {"tiny": 8, "S": 1, "B": 1}}
STEPS = {"videomae": 5, "twlv": 2}
HF_DECODER = {"S": (192, 3), "B": (384, 6)}  # VideoMAE decoder (width, heads) per encoder size


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration. framework: jax (our step), torch (HF VideoMAE), peak (matmul)."""

    framework: str
    size: str = ""
    objective: str = "videomae"
    precision: str = "float32"
    batch: int = 0
    variant: str = ""            # our step with one override, model.<variant> ("": ours as it is;
                                 # BASELINE: ours as the --baseline checkout has it)
    check: bool = False          # record first-batch gradient norms (compared between variants)
    checkout: str = ""           # the checkout the worker runs in ("": this one)

    def spec(self) -> dict:
        """The worker's --worker argument: the case as the checkout it runs in sees it (a
        baseline is that checkout's step as it is)."""
        spec = dataclasses.asdict(self)
        del spec["checkout"]
        return dict(spec, variant="") if self.variant == BASELINE else spec

    @property
    def label(self) -> str:
        if self.framework == "peak":
            return f"matmul peak {self.precision}"
        who = "ours" + (f" ({self.variant})" if self.variant else "")
        who = "HF PyTorch" if self.framework == "torch" else who
        return f"{who} {self.size} {self.objective} {self.precision} x{self.batch}"


# ---------------------------------------------------------------------------------------------
# Workers

def video_batch(batch: int, frames: int, size: int) -> np.ndarray:
    """Random uint8 clips (B, T, H, W, 3); the same for every case of a shape."""
    return np.random.RandomState(0).randint(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)


def jax_overrides(case: Case) -> list[tuple[str, str]]:
    """Config overrides: one device, the case's batch and dtype, our step's attention and layers (or
    the variant's), no remat, no stochastic depth (HF VideoMAE has neither); VideoMAE's layout (qv
    bias, 1-D positions) for videomae."""
    model = dict(OURS)
    if case.variant:
        key, value = case.variant.split("=")
        model[f"model.{key}"] = value
    overrides = [("train.batch_size", str(case.batch)), ("mesh.shape", "1,1,1"),
                 ("model.dtype", case.precision), *model.items(),
                 ("model.remat", "none"), ("model.drop_path", "0.0"), ("teacher.allow_random", "true")]
    if case.objective == "videomae":
        overrides += [("model.qkv_bias", "qv"), ("model.pos_embed", "sincos1d")]
    return overrides


class JaxRunner:
    """Our compiled train step on one device; `step()` runs and times one optimizer step."""

    def __init__(self, case: Case):
        import jax

        from twlv_jax import config as cfglib
        from twlv_jax.parallel.mesh import make_mesh
        from twlv_jax.train import flops
        from twlv_jax.train import state as statelib
        from twlv_jax.train import step as steplib
        self.jax = jax
        config = cfglib.build(f"configs/pretrain.py:variant={case.size},objective={case.objective}",
                              jax_overrides(case))
        setup = statelib.build(config, make_mesh("1,1,1", jax.devices()[:1]), total_steps=1000,
                               warmup_steps=10)
        self.state, self.teachers = statelib.init_state(setup), statelib.init_teachers(setup, {})
        self.video = video_batch(case.batch, config.model.frames, config.model.image_size)
        self.poison = np.float32(0.0)
        self.grad_norms = self._grad_norms(setup) if case.check else []
        start = time.perf_counter()
        self.compiled = steplib.jit_train_step(setup).lower(
            self.state, self.teachers, self.video, self.poison).compile()
        self.loss = float(self._run()["loss"])
        self.compile_s = time.perf_counter() - start
        self.flops = flops.step_flops(config, setup.objective)
        memory = self.compiled.memory_analysis()
        self.temp_gb = memory.temp_size_in_bytes / 1e9 if memory is not None else 0.0

    def _grad_norms(self, setup) -> list[float]:
        """Norm of each parameter's gradient on the first batch (before any update)."""
        from twlv_jax.train import step as steplib
        _, _, grads = steplib.jit_grads(setup)(self.state, self.teachers, self.video)
        return [float(np.linalg.norm(np.asarray(g, np.float64))) for g in self.jax.tree.leaves(grads)]

    def _run(self):
        self.state, metrics = self.compiled(self.state, self.teachers, self.video, self.poison)
        self.jax.block_until_ready((self.state, metrics))
        return metrics

    def step(self) -> float:
        start = time.perf_counter()
        self._run()
        return time.perf_counter() - start

    def profile(self) -> dict:
        return step_profile.profile_step(self.compiled, self.step)


def hf_config(case: Case):
    """VideoMAEForPreTraining's config for our encoder size: 16 frames at 224 px (tiny: ours)."""
    from transformers import VideoMAEConfig

    from twlv_jax.models.vit import SIZES
    from twlv_jax.objectives.targets.pixel import DECODER_WIDTH
    s = SIZES[case.size]
    width = DECODER_WIDTH[case.size]
    heads = HF_DECODER.get(case.size, (width, max(1, width // 64)))[1]
    tiny = case.size == "tiny"
    return VideoMAEConfig(
        image_size=32 if tiny else 224, patch_size=8 if tiny else 16, num_frames=8 if tiny else 16,
        tubelet_size=2, hidden_size=s.dim, num_hidden_layers=s.depth, num_attention_heads=s.heads,
        intermediate_size=s.mlp_dim, decoder_hidden_size=width, decoder_num_hidden_layers=4,
        decoder_num_attention_heads=heads, decoder_intermediate_size=4 * width, norm_pix_loss=True)


class TorchRunner:
    """HF VideoMAEForPreTraining on CPU: uint8 clips in, tube mask sampled, normalised, forward,
    backward, gradient clipping and an AdamW update, like our step."""

    def __init__(self, case: Case):
        import torch
        from transformers import VideoMAEForPreTraining

        from twlv_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        self.torch = torch
        torch.manual_seed(0)
        torch.set_num_threads(cores())
        config = hf_config(case)
        self.model = VideoMAEForPreTraining(config).train()
        self.attention = self.model.config._attn_implementation
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                           eps=1e-8, weight_decay=0.05)
        self.bf16 = case.precision == "bfloat16"
        self.video = torch.from_numpy(video_batch(case.batch, config.num_frames, config.image_size))
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        grid = (config.image_size // config.patch_size) ** 2
        self.slots, self.per_slot = config.num_frames // config.tubelet_size, grid
        self.masked = int(0.9 * grid)                        # our tube mask: int(ratio * H'W')
        start = time.perf_counter()
        self.loss = float(self._run())
        self.compile_s = time.perf_counter() - start
        self.flops = 0.0

    def _mask(self):
        torch = self.torch
        batch = self.video.shape[0]
        order = torch.rand(batch, self.per_slot).argsort(dim=1)[:, :self.masked]
        spatial = torch.zeros(batch, self.per_slot, dtype=torch.bool).scatter_(1, order, True)
        return spatial.repeat(1, self.slots)                 # same spatial mask in every time slot

    def _run(self):
        torch = self.torch
        pixels = (self.video.permute(0, 1, 4, 2, 3).float() / 255.0 - self.mean) / self.std
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(pixels, bool_masked_pos=self._mask()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss.detach()

    def step(self) -> float:
        start = time.perf_counter()
        self._run()
        return time.perf_counter() - start


class PeakRunner:
    """The library's matmul peak measurement; `step()` returns FLOP/s instead of seconds."""

    def __init__(self, case: Case):
        from twlv_jax.train import flops
        self.measure = functools.partial(flops.measured_peak.__wrapped__, case.precision)
        self.compile_s, self.flops, self.loss = 0.0, 0.0, 0.0

    def step(self) -> float:
        return self.measure(repeats=3)


RUNNERS = {"jax": JaxRunner, "torch": TorchRunner, "peak": PeakRunner}


def cores() -> int:
    """CPU cores this process may use (what XLA's CPU client and torch threads are sized to)."""
    return len(os.sched_getaffinity(0))


def worker(spec: str) -> int:
    """Builds the case, then answers the parent's commands (`workers.serve`)."""
    case = Case(**json.loads(spec))
    runner = RUNNERS[case.framework](case)
    built = {"hf_attention": runner.attention} if case.framework == "torch" else {}
    if case.framework == "jax":
        built.update(grad_norms=runner.grad_norms, temp_gb=runner.temp_gb)
    return workers.serve(runner, compile_s=runner.compile_s, flops=runner.flops, loss=runner.loss,
                         **built)


def spawn(case: Case) -> workers.Worker:
    """A worker for the case, in this checkout or the baseline's."""
    root = case.checkout or ROOT
    return workers.Worker(case.label, root, os.path.join("benchmarks", "train_step.py"), case.spec())


# ---------------------------------------------------------------------------------------------
# Parent: groups of interleaved cases

@dataclasses.dataclass
class Result:
    case: Case
    values: list[float]
    compile_s: float
    flops: float
    loss: float
    hf_attention: str = ""             # HF's attention implementation (torch cases)
    grad_norms: tuple[float, ...] = ()
    temp_gb: float = 0.0               # XLA's temporary buffers of the compiled step (ours)
    rss_gb: float = 0.0                # peak resident memory of the worker after the timed steps

    @property
    def seconds(self) -> float:
        return float(np.median(self.values))

    @property
    def clips_per_s(self) -> float:
        return self.case.batch / self.seconds


def start_workers(cases: list[Case], started: dict[Case, workers.Worker]) -> None:
    """Starts a worker per case into `started`, compiling in parallel; one after the other when
    the group holds a twlv model (each takes several GB while it compiles)."""
    one_by_one = any(c.objective == "twlv" and c.size != "tiny" for c in cases)
    for case in cases:
        started[case] = spawn(case)
        if one_by_one:
            started[case].info = started[case].read()
    for case, w in started.items():
        w.info = w.info or w.read()
        print(f"   ready: {case.label} (compile + first step {w.info['compile_s']:.1f} s, "
              f"loss {w.info['loss']:.4f}, peak RSS {w.info['rss_gb']:.1f} GB)", flush=True)


def run_group(cases: list[Case], steps: int, warmup: int, profile: tuple[Case, ...] = ()) -> tuple:
    """Starts every case's worker, then interleaves their steps."""
    print(f"\n-- group: {', '.join(c.label for c in cases if c.framework != 'peak')}", flush=True)
    started: dict[Case, workers.Worker] = {}
    try:
        start_workers(cases, started)
        for _ in range(warmup):
            for w in started.values():
                w.ask("step")
        values, rss = {case: [] for case in started}, {}
        for round_ in range(steps):
            order = list(started.items())
            for case, w in order[::-1] if round_ % 2 else order:     # who goes first alternates
                answer = w.ask("step")
                values[case].append(answer["value"])
                rss[case] = answer["rss_gb"]
            print(f"   round {round_ + 1}/{steps}: " + ", ".join(
                f"{case.label.split(' x')[0]} {values[case][-1]:.2f}" for case in started
                if case.framework != "peak"), flush=True)
        profiles = {case: w.ask("profile")["profile"] for case, w in started.items() if case in profile}
    finally:
        for w in started.values():
            w.close()
    results = [Result(case, values[case], w.info["compile_s"], w.info["flops"], w.info["loss"],
                      w.info.get("hf_attention", ""), tuple(w.info.get("grad_norms", ())),
                      w.info.get("temp_gb", 0.0), rss.get(case, w.info["rss_gb"]))
               for case, w in started.items()]
    return results, profiles


def peak_cases(precisions) -> list[Case]:
    return [Case("peak", precision=p) for p in precisions]


def plan(args) -> list[dict]:
    """The groups to run, each a list of cases measured side by side: per size and precision ours
    (on the largest size with its variants; with --baseline, on every size with the baseline's) with
    HF PyTorch for videomae; per size the twlv cases (with variants or a baseline a group per
    precision, for memory). Profiles: ours on the largest size."""
    groups = []
    largest = args.sizes[-1]

    def variants(size: str) -> list[str]:
        names = ["", *VARIANTS] if size == largest and not args.no_variants else [""]
        return names + [BASELINE] * bool(args.baseline)

    def ours(size, objective, precision, batch, variant, check=False) -> Case:
        return Case("jax", size, objective, precision, batch, variant, check,
                    args.baseline if variant == BASELINE else "")

    def profiled(cases: list[Case]) -> tuple[Case, ...]:
        return () if args.no_profile or cases[0].size != largest else tuple(
            c for c in cases if c.framework == "jax" and not c.variant)

    for size in args.sizes:
        names = variants(size)
        for objective in args.objectives:
            batch = args.batch or BATCH[objective][size]
            steps = args.steps or STEPS[objective]
            if objective == "twlv":
                together = [args.precisions] if len(names) == 1 else [[p] for p in args.precisions]
                for precisions in together:
                    cases = [ours(size, objective, p, batch, a) for p in precisions for a in names]
                    groups.append(dict(cases=cases + peak_cases(precisions), steps=steps,
                                       profile=profiled(cases)))
                continue
            for precision in args.precisions:
                cases = [ours(size, objective, precision, batch, a, check=len(names) > 1) for a in names]
                if not args.no_torch:
                    cases.append(Case("torch", size, objective, precision, batch))
                groups.append(dict(cases=cases + peak_cases([precision]), steps=steps,
                                   profile=profiled(cases)))
    return groups


# ---------------------------------------------------------------------------------------------
# Report

def machine() -> str:
    import jax
    import torch
    import transformers
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line),
                     platform.processor())
        f.seek(0)
        flags = f.read()
    isa = [name for name in ("avx512f", "avx512_bf16", "amx_bf16") if f" {name}" in flags]
    return (f"{model} ({', '.join(isa)}), {cores()} cores used of {os.cpu_count()}, load average "
            f"{os.getloadavg()[0]:.2f} at start; Python {platform.python_version()}, JAX {jax.__version__} "
            f"(CPU), torch {torch.__version__} ({cores()} threads), transformers {transformers.__version__}")


def checkout_text(path: str) -> str:
    """The checkout's path and commit (and whether it has uncommitted changes)."""
    git = lambda *argv: subprocess.run(["git", "-C", path, *argv], capture_output=True,
                                       text=True).stdout.strip()
    dirty = ", with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"`{path}` at {git('log', '-1', '--format=%h') or 'an unknown commit'}{dirty}"


def peaks(results: list[Result]) -> dict[str, float]:
    """Best matmul FLOP/s per precision over every measurement of the run."""
    best = collections.defaultdict(float)
    for r in results:
        if r.case.framework == "peak":
            best[r.case.precision] = max(best[r.case.precision], *r.values)
    return dict(best)


def mfu(result: Result, peak: dict[str, float]) -> float:
    return result.flops / result.seconds / peak[result.case.precision]


def index(results: list[Result]) -> dict[tuple, Result]:
    return {(r.case.framework, r.case.size, r.case.objective, r.case.precision, r.case.variant): r
            for r in results}


def grad_difference(result: Result, reference: Result) -> str:
    """Largest relative difference of per-parameter gradient norms from the reference's."""
    if not result.grad_norms or not reference.grad_norms:
        return "-"
    ours, base = np.asarray(result.grad_norms), np.asarray(reference.grad_norms)
    nonzero = base > 0
    return f"{np.max(np.abs(ours[nonzero] - base[nonzero]) / base[nonzero]):.1e}"


def main_table(results: list[Result], peak: dict[str, float]) -> list[str]:
    rows = ["| size | objective | precision | batch | step (s) | clips/s | model GFLOP/step | "
            "achieved GFLOP/s | MFU |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.case.framework == "jax" and not r.case.variant:
            rows.append(f"| {r.case.size} | {r.case.objective} | {r.case.precision} | {r.case.batch} | "
                        f"{r.seconds:.3f} | {r.clips_per_s:.2f} | {r.flops / 1e9:.1f} | "
                        f"{r.flops / r.seconds / 1e9:.1f} | {mfu(r, peak):.1%} |")
    return rows


def torch_table(results: list[Result]) -> list[str]:
    measured = [v for v in VARIANTS if any(r.case.variant == v for r in results)]
    rows = ["| size | precision | batch | HF PyTorch clips/s | ours clips/s | ours / HF | "
            + "".join(f"ours with {v} / HF | " for v in measured).rstrip(),
            "|---|---|---:|---:|---:|---:|" + "---:|" * len(measured)]
    by_key = index(results)
    for r in results:
        key = ("jax", r.case.size, r.case.objective, r.case.precision)
        ours = by_key.get((*key, ""))
        if r.case.framework == "torch" and ours:
            versus = [by_key.get((*key, v)) for v in measured]
            rows.append(f"| {r.case.size} | {r.case.precision} | {r.case.batch} | {r.clips_per_s:.2f} | "
                        f"{ours.clips_per_s:.2f} | {ours.clips_per_s / r.clips_per_s:.2f}x | "
                        + "".join(f"{c.clips_per_s / r.clips_per_s:.2f}x | " if c else "- | "
                                  for c in versus).rstrip())
    return rows


def variant_table(results: list[Result], peak: dict[str, float], variant: str) -> list[str]:
    """Ours against our step with the variant's override, same size, objective and precision, same
    group. Speed-up: of the median steps, and the median of each round's ratio (the two steps
    of a round ran one after the other, under about the same load)."""
    rows = [f"| size | objective | precision | batch | step {variant} (s) | step ours (s) | speed-up | "
            f"speed-up per round | MFU {variant} -> ours | XLA temp GB {variant} -> ours | "
            f"peak RSS GB {variant} -> ours | compile + first step (s) {variant} -> ours | grad-norm diff |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = index(results)
    for r in results:
        c = r.case
        ours = by_key.get(("jax", c.size, c.objective, c.precision, ""))
        if c.framework != "jax" or c.variant != variant or not ours:
            continue
        per_round = np.median(np.asarray(r.values) / np.asarray(ours.values))
        rows.append(f"| {c.size} | {c.objective} | {c.precision} | {c.batch} | {r.seconds:.3f} | "
                    f"{ours.seconds:.3f} | {r.seconds / ours.seconds:.2f}x | {per_round:.3f}x | "
                    f"{mfu(r, peak):.1%} -> {mfu(ours, peak):.1%} | {r.temp_gb:.2f} -> {ours.temp_gb:.2f} | "
                    f"{r.rss_gb:.1f} -> {ours.rss_gb:.1f} | {r.compile_s:.0f} -> {ours.compile_s:.0f} | "
                    f"{grad_difference(r, ours)} |")
    return rows


def targets(results: list[Result], peak: dict[str, float]) -> list[str]:
    """The two targets, checked for our step: at least 1.5x HF's
    clips/s (videomae, S and larger), MFU at least 50% (B)."""
    lines = []
    by_key = index(results)
    for r in results:
        ours = by_key.get(("jax", r.case.size, r.case.objective, r.case.precision, ""))
        if r.case.framework == "torch" and ours and r.case.size != "tiny":
            ratio = ours.clips_per_s / r.clips_per_s
            lines.append(f"- {r.case.size} {r.case.precision}, ours >= 1.5x HF clips/s: "
                         f"{ratio:.2f}x: {'met' if ratio >= 1.5 else 'not met'}.")
    for r in results:
        if r.case.framework == "jax" and r.case.size == "B" and not r.case.variant:
            value = mfu(r, peak)
            lines.append(f"- B {r.case.objective} {r.case.precision}, MFU >= 50%: {value:.1%}: "
                         f"{'met' if value >= 0.5 else 'not met'}.")
    return lines or ["- Not checked: no S or B cases measured."]


def report(header: str, results: list[Result], profiles: dict, peak: dict, args) -> str:
    hf = next((r for r in results if r.case.framework == "torch"), None)
    peak_count = sum(len(r.values) for r in results if r.case.framework == "peak")
    lines = ["# Train step: throughput and MFU", "", f"Machine: {header}.", "",
             f"Command: `benchmarks/train_step.py {' '.join(args.argv) or '(defaults)'}`.", "",
             f"Matmul peak measured in this run (2048^3, float32 accumulation, best of {peak_count} "
             "measurements taken between the steps): "
             + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peak.items()) + ".",
             "", f"## Our train step ({OURS_TEXT})", "",
             *main_table(results, peak), "",
             "Step: median of the timed steps. MFU: analytic model FLOPs / step time / measured matmul "
             "peak at the step's precision (bfloat16: bf16 matmuls with float32 accumulation).", ""]
    if hf:
        lines += ["## Against Hugging Face VideoMAEForPreTraining (PyTorch, CPU)", "",
                  *torch_table(results), "", SAME_WORK.format(attention=hf.hf_attention, cores=cores()), ""]
    if any(r.case.variant == "attention=xla" for r in results):
        lines += ["## Blockwise attention against XLA's (model.attention=xla, the previous behaviour)",
                  "", *variant_table(results, peak, "attention=xla"), "", ATTENTION_NOTE, ""]
    if any(r.case.variant == "scan=true" for r in results):
        lines += ["## Layers unrolled against the layer scan (model.scan=true, the config default)",
                  "", *variant_table(results, peak, "scan=true"), "", SCAN_NOTE, ""]
    if any(r.case.variant == BASELINE for r in results):
        lines += [f"## Against the baseline checkout ({checkout_text(args.baseline)})", "",
                  *variant_table(results, peak, BASELINE), "", BASELINE_NOTE, ""]
    if hf:
        lines += ["## Targets", "", *targets(results, peak), ""]
    if profiles:
        lines += ["## Profile: what the step spends its time on", "", PROFILE_NOTE,
                  *step_profile.profile_section(profiles), ""]
    lines += ["## All measurements", "",
              "| case | compile + first step (s) | XLA temp (GB) | peak RSS (GB) | "
              "timed steps (s; peak: GFLOP/s) |", "|---|---:|---:|---:|---|"]
    for r in results:
        scale = 1e-9 if r.case.framework == "peak" else 1.0
        values = ", ".join(f"{v * scale:.2f}" for v in r.values)
        temp = f"{r.temp_gb:.2f}" if r.case.framework == "jax" else ""
        rss = f"{r.rss_gb:.1f}" if r.case.framework != "peak" else ""
        lines.append(f"| {r.case.label} | {r.compile_s:.1f} | {temp} | {rss} | {values} |")
    return "\n".join(lines) + "\n"


SAME_WORK = """The same work on both sides:

- encoder of the same size, 16 frames at 224 px, tubelets 2 x 16 x 16 (1568 tokens);
- tube mask, int(0.9 x 196) = 176 of 196 tokens masked per time slot, sampled every step (160 visible);
- VideoMAE's decoder width and depth (S: 192 wide, 3 heads; B: 384 wide, 6 heads; 4 blocks, MLP 4x)
  over all 1568 tokens; per-tubelet normalised pixel targets (HF: norm_pix_loss=True, the default);
  MSE over the masked tokens;
- uint8 clips in, converted and normalised inside the timed step; global-norm gradient clipping at
  1.0; AdamW (betas 0.9/0.95, weight decay 0.05); one full optimizer step per call; the same batch;
- bfloat16: ours with model.dtype=bfloat16 (bf16 matmuls forward and backward, float32
  accumulation, float32 params, norms and softmax); HF under torch.autocast('cpu',
  dtype=torch.bfloat16), float32 params;
- torch.set_num_threads({cores}), the cores XLA uses.

What differs: HF's attention is `{attention}`, PyTorch's fused CPU kernel; ours is the library's
blockwise attention (`twlv_jax/models/attention.py`: query blocks, custom VJP that recomputes the
probabilities in the backward) written in plain JAX and compiled by XLA; our layers are unrolled
(model.scan=false; the config default, a layer scan, is in the last column); our step also samples the
mask on the device, computes loss metrics and the parameter, update and gradient norms, and is one
compiled program (HF runs eagerly); HF has no final encoder norm (its mean-pooling config); HF
decays every parameter, ours only matrices. Ours runs the VideoMAE layout (model.qkv_bias=qv,
model.pos_embed=sincos1d), model.remat=none and model.drop_path=0 (HF has neither)."""
OURS_TEXT = "model.attention=blockwise, the library's default on CPU; model.scan=false"
ATTENTION_NOTE = """Both columns are our step as it is but for one override, model.attention=xla
in the first, measured side by side in the same groups.

- *attention=xla*: `jax.nn.dot_product_attention(implementation="xla")`, which on CPU materialises
  the (B, H, N, N) float32 logits and probabilities and keeps them for every layer until the
  backward.
- *ours*, blockwise: `twlv_jax/models/attention.py`: the encoder's 160 visible tokens run all heads
  at once in one block; the decoder's 1568 tokens one head at a time in 4 query blocks of 392; the
  forward saves only q, k, v, the output and the log-sum-exp, and the backward recomputes each
  block's probabilities (FlashAttention's scheme), so it runs more matmul FLOPs than the model
  FLOPs that MFU counts.
- The frozen CLIP teacher of the twlv objective does not take model.attention: its attention is
  `auto` (blockwise on CPU; 197 tokens, one block) in both columns.
- *XLA temp*: temporary buffers of the compiled step (`memory_analysis()`). *Peak RSS*: the
  worker's largest resident memory after the timed steps (compilation and, for videomae, the
  gradient check included). *Grad-norm diff*: the largest relative difference of any parameter's
  gradient norm on the first batch between the two (videomae only)."""
SCAN_NOTE = """Both columns are our step as it is but for one override, model.scan=true in the
first: the config default, which runs the stacked blocks with `jax.lax.scan`; ours runs them
as a Python loop over the same stacked parameters (model.scan=false). Unrolled, XLA's CPU
backend neither zero-fills and writes per-layer slices of stacked buffers for the saved
activations and the gradients, nor reads the backward's operands back out of them; compiling
takes about twice as long. On GPUs and TPUs the scan is the usual choice (compile time)."""
BASELINE_NOTE = """Both columns are our step as it is (model.attention=blockwise, model.scan=false),
in the baseline: as that checkout's code has it, run by that checkout's `benchmarks/train_step.py` in
a worker of the same group (each worker imports `twlv_jax` from its own checkout)."""
PROFILE_NOTE = ("One step traced with `jax.profiler.trace` after the timed steps. Op time is summed "
                "over XLA's threads. " + step_profile.NOTE)
INDEX_HEAD = """# Benchmarks

- [Data pipeline throughput](benchmarks/results/data.md) (`benchmarks/data.py`)
- [Train step on CPU: throughput, MFU, HF PyTorch comparison, variants (attention, layer scan), profile]\
(benchmarks/results/train_step.md) (`benchmarks/train_step.py`)
- [Train step on one GPU (H200, bf16)](benchmarks/results/gpu_step.md) (`benchmarks/gpu_step.py`)

"""
INDEX_SECTION = "## Train step on CPU"


def index_section(header: str, results: list[Result], peak: dict) -> str:
    """This script's section of BENCHMARKS.md."""
    lines = [INDEX_SECTION, "", f"Machine: {header}.", "",
             f"Our step ({OURS_TEXT}):", "", *main_table(results, peak), ""]
    if any(r.case.framework == "torch" for r in results):
        lines += ["Against Hugging Face VideoMAEForPreTraining (PyTorch) on the same work:", "",
                  *torch_table(results), "", "Targets:", "", *targets(results, peak), ""]
    lines += ["Our step against model.attention=xla and model.scan=true, the fairness notes and the "
              "profile: [benchmarks/results/train_step.md](benchmarks/results/train_step.md).", ""]
    return "\n".join(lines) + "\n"


def index_page(old: str, section: str) -> str:
    """BENCHMARKS.md with this script's section replaced (appended if missing); the rest of the
    page (links, the other benchmarks' sections) is kept as it is."""
    parts = re.split(r"(?m)^(?=## )", old) if old.strip() else [INDEX_HEAD]
    mine = [i for i, part in enumerate(parts) if part.startswith(INDEX_SECTION + "\n")]
    if mine:
        parts[mine[0]] = section
    else:
        parts.append(section)
    return "".join(part.rstrip("\n") + "\n\n" for part in parts).rstrip("\n") + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,S,B", help="comma-separated encoder sizes (tiny, S, B)")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--objectives", default="videomae,twlv")
    parser.add_argument("--batch", type=int, default=0,
                        help="clips per step for every case (default: per size and objective)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per case (default: 5 videomae, 2 twlv)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the compiling one")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny only, 2 steps, no warm-up; prints, writes no files")
    parser.add_argument("--no_torch", action="store_true", help="skip the HF PyTorch cases")
    parser.add_argument("--no_variants", action="store_true",
                        help=f"skip the variants of our step ({', '.join(VARIANTS)})")
    parser.add_argument("--no_profile", action="store_true")
    parser.add_argument("--baseline", default="", metavar="DIR",
                        help="another checkout (e.g. a git worktree of an earlier commit) whose step "
                             "runs side by side with ours in every group")
    parser.add_argument("--out", default="",
                        help="write the report to this file only (not results/ nor BENCHMARKS.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    args.baseline = args.baseline and os.path.abspath(args.baseline)
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "benchmarks", "train_step.py")):
        parser.error(f"--baseline {args.baseline}: no benchmarks/train_step.py there")
    if args.quick:
        args.sizes, args.steps, args.warmup = "tiny", args.steps or 2, 0
    args.sizes = args.sizes.split(",")
    args.precisions = args.precisions.split(",")
    args.objectives = args.objectives.split(",")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args.worker)
    # The workers' JAX on the CPU even where libtpu is installed (make test installs it).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    header = machine()
    print(f"Machine: {header}", flush=True)
    start = time.perf_counter()
    results, profiles, failures = [], {}, []
    groups = plan(args)
    for number, group in enumerate(groups, 1):
        try:
            group_results, group_profiles = run_group(group["cases"], group["steps"], args.warmup,
                                                      group["profile"])
        except RuntimeError as error:          # a worker died (out of memory, say): the group is lost
            print(f"   group failed: {error}", flush=True)
            failures.append(f"- Group not measured: {', '.join(c.label for c in group['cases'])}: {error}.")
            group_results, group_profiles = [], {}
        results += group_results
        profiles.update(group_profiles)
        done = f"{(time.perf_counter() - start) / 60:.1f} min" + ("" if number == len(groups) else
                                                                 f", {number} of {len(groups)} groups")
        text = report(header, results, profiles, peaks(results), args) + "\n".join(failures)
        text += f"\n\nWhole run: {done}.\n"
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        elif not args.quick:
            write_results(text, index_section(header, results, peaks(results)))
    print("\n" + text)
    return 1 if failures else 0


def write_results(text: str, section: str) -> None:
    """The full report, and this script's section of the index page (rewritten after every group)."""
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    old = ""
    if os.path.exists(INDEX):
        with open(INDEX) as f:
            old = f.read()
    with open(INDEX, "w") as f:
        f.write(index_page(old, section))
    print(f"   wrote {os.path.relpath(RESULTS, ROOT)} and {os.path.relpath(INDEX, ROOT)}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
