"""Train-step throughput and model FLOPs utilisation (MFU): our JAX step against Hugging Face
`VideoMAEForPreTraining` (PyTorch) on the same work, our step against two variants of it (XLA's
attention, the layer scan), and a profile of what bounds the step.

    .venv/bin/python benchmarks/train_step.py [--sizes tiny,S,B] [--precisions float32,bfloat16]
        [--objectives videomae,twlv] [--batch N] [--steps N] [--quick]

Writes benchmarks/results/train_step.md and the CPU train-step section of BENCHMARKS.md, and
prints the report.

Every case (one model, objective, precision, variant) runs in a worker process of its own, so
each has its own memory and threads. The cases that are compared with each other form a
group: their workers are alive together and the parent asks each for one step in turn, round
after round, so that they share the load of this shared machine. Step times are medians of the
timed steps; the compiling call and `--warmup` more steps are not timed. MFU is the analytic
model FLOPs of a step (`twlv_jax.train.flops.step_flops`) over the step time and the matmul peak
(`flops.measured_peak`: 2048^3, float32 accumulation), measured between the steps of the same
run; the best of those measurements is used.

Our step: model.attention=blockwise (what the default, `auto`, picks on CPUs:
`twlv_jax/models/attention.py`) and model.scan=false (layers unrolled, faster on XLA's CPU
backend than the layer scan of the config default). On the largest size the same step also runs
with one override changed, side by side in the same groups: model.attention=xla
(`jax.nn.dot_product_attention(implementation="xla")`, the library's behaviour before blockwise
attention) and model.scan=true (the config default).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import gzip
import json
import linecache
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_step.md")
INDEX = os.path.join(ROOT, "BENCHMARKS.md")
MARK = "@@"                                  # worker replies: one JSON object per line after MARK
# Our step: the attention the library picks on CPUs, layers unrolled.
OURS = (("model.attention", "blockwise"), ("model.scan", "false"))
# Variants of our step on the largest size: one override each (model.KEY=VALUE).
VARIANTS = ("attention=xla", "scan=true")
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
    variant: str = ""            # our step with one override, model.<variant> ("": ours as it is)
    check: bool = False          # record first-batch gradient norms (compared between variants)

    @property
    def label(self) -> str:
        if self.framework == "peak":
            return f"matmul peak {self.precision}"
        who = "ours" + (f" ({self.variant})" if self.variant else "")
        who = "HF PyTorch" if self.framework == "torch" else who
        return f"{who} {self.size} {self.objective} {self.precision} x{self.batch}"


# ---------------------------------------------------------------------------------------------
# Profile: trace events of one step, attributed to source and kind through the compiled HLO

HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?[\]\})] ([a-z][a-z0-9\-]*)\((.*)$")
HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
CONTAINERS = {"while", "call", "conditional"}
MOVEMENT = {"copy", "transpose", "dynamic-slice", "dynamic-update-slice", "slice", "concatenate", "pad",
            "gather", "scatter", "broadcast", "reshape", "bitcast", "parameter", "constant", "tuple",
            "get-tuple-element", "iota", "reverse", "convert"}
# hybrid.py source text -> part of the step
PARTS = (("student_model(", "encoder"), ("model.pixel.loss", "pixel decoder + loss"),
         ("model.latent.loss", "latent predictor + loss"), ("ema_student(", "EMA encoder"),
         ("teacher.features", "image teacher"), ("normalize_for_clip", "image teacher"),
         ("make_mask", "mask sampling"), ("normalize(", "input normalisation"),
         ("distill", "distill heads + loss"), ("video_teacher", "video teacher"))
# innermost library function -> kind of work
ATTENTION = "attention softmax(QKᵀ)V"
KINDS = (("attention.py:", ATTENTION),
         ("matmul", "dense matmuls"), ("_cpu_einsum", "dense matmuls"), ("Dense.", "dense matmuls"),
         ("project_qkv", "dense matmuls"), ("Attention.", "dense matmuls"), ("LayerNorm", "layernorm"),
         ("<lambda>", "GELU"), ("Mlp.", "GELU"),
         ("Transformer.", "stacked layers: weight slices, stacking"), ("drop_path", "drop path"),
         ("patchify", "patchify / gather"), ("gather_tokens", "patchify / gather"),
         ("pixel_targets", "pixel targets"), ("masking.py", "mask sampling"))


def _table(text: str, name: str) -> dict[int, str]:
    """One of the debug tables (FileNames, FunctionNames, ...) at the top of an HLO module's text."""
    start = text.find("\n" + name + "\n")
    rows = {}
    if start < 0:
        return rows
    for line in text[start + len(name) + 2:].split("\n"):
        if not line.strip():
            break
        key, value = line.split(" ", 1)
        rows[int(key)] = value.strip().strip('"')
    return rows


@dataclasses.dataclass(frozen=True)
class Instruction:
    op: str
    dtype: str                  # element type of the result ('' for tuples)
    operands: tuple[str, ...]
    calls: tuple[str, ...]      # computations it runs (fusion bodies, loop bodies, reducers)
    frame: int                  # stack frame id of its source (0: none)


class HloIndex:
    """Instructions of a compiled module: op, called computations, Python stack of the source."""

    def __init__(self, text: str):
        files, functions = _table(text, "FileNames"), _table(text, "FunctionNames")
        self.locations = {}
        for key, value in _table(text, "FileLocations").items():
            m = re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", value)
            self.locations[key] = (files[int(m[1])], functions[int(m[2])], int(m[3]))
        self.frames = {}
        for key, value in _table(text, "StackFrames").items():
            m = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", value)
            # The text form prints parent ids one higher than the frame ids (0: no parent).
            self.frames[key] = (int(m[1]), int(m[2]) - 1)
        self.computations: dict[str, list[str]] = {}
        self.instructions: dict[str, Instruction] = {}
        current = None
        for line in text.split("\n"):
            if m := HLO_COMPUTATION.match(line):
                current = m[1]
                self.computations[current] = []
            elif (m := HLO_INSTRUCTION.match(line)) and current:
                dtype = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[", line)
                frame = re.search(r"stack_frame_id=(\d+)", m[3])
                self.computations[current].append(m[1])
                self.instructions[m[1]] = Instruction(
                    m[2], dtype[1] if dtype else "", tuple(re.findall(r"%([\w.\-]+)", m[3].split(")")[0])),
                    tuple(re.findall(r"(?:calls|body|to_apply)=%([\w.\-]+)", m[3])),
                    int(frame[1]) if frame else 0)

    def _inside(self, name: str) -> list[Instruction]:
        """The instruction and, for a fusion, every instruction of its computations."""
        found, todo, seen = [self.instructions[name]], list(self.instructions[name].calls), set()
        while todo:
            computation = todo.pop()
            if computation in seen:
                continue
            seen.add(computation)
            for inner in self.computations.get(computation, []):
                found.append(self.instructions[inner])
                todo += self.instructions[inner].calls
        return found

    def hlo_class(self, name: str) -> str:
        """'matmul, <input types>' (a dot inside), 'data movement' (copies, slices, converts only)
        or 'elementwise/reduce'."""
        inside = self._inside(name)
        ops = {i.op for i in inside[1:]} if inside[0].op == "fusion" else {inside[0].op}
        dots = [i for i in inside if i.op in ("dot", "convolution")]
        if dots:
            types = sorted({self.instructions[o].dtype for d in dots for o in d.operands
                            if o in self.instructions})
            return f"matmul, {'/'.join(types)} inputs"
        return "data movement" if ops <= MOVEMENT else "elementwise/reduce"

    def stack(self, frame: int) -> list[tuple[str, str, int]]:
        """(file, function, line) from the innermost frame out."""
        out, seen = [], set()
        while frame > 0 and frame not in seen and frame in self.frames:
            seen.add(frame)
            location, frame = self.frames[frame]
            out.append(self.locations[location])
        return out


def _part(stack) -> str:
    """Which part of the step a stack belongs to, from the line of `hybrid.losses` it came from."""
    ours = [f for f in stack if "twlv_jax" in f[0] or "optax" in f[0]]
    for file, function, line in ours:
        if file.endswith("hybrid.py") and function == "losses":
            text = linecache.getline(file, line)
            part = next((p for key, p in PARTS if key in text), f"hybrid.py:{line}")
            if part == "pixel decoder + loss" and any(f[1] == "pixel_targets" for f in ours):
                return "pixel targets"
            return part
    if any("optax" in f[0] or (f[0].endswith("step.py") and f[1] == "train_step") for f in ours):
        return "optimizer + metrics"
    return "unattributed (no source)"


def _kind(stack, hlo_class: str) -> str:
    """The kind of work, from the innermost library frame."""
    for file, function, line in stack:
        if "twlv_jax" in file:
            text = linecache.getline(file, line)
            if "dot_product_attention(" in text or "blockwise_attention(" in text:
                return ATTENTION                 # ops of the attention call (custom VJP's too)
            key = f"{os.path.basename(file)}:{function}"
            return next((kind for k, kind in KINDS if k in key), key)
        if "optax" in file:
            return "optimizer update"
    return hlo_class


# GPU kernels that name no HLO op (inside a command buffer every kernel names the buffer), by the
# library that ran them: name fragment -> (HLO op class, kind of work)
LIBRARY_KERNELS = (("cudnn", ("cuDNN kernel", ATTENTION)), ("sdpa", ("cuDNN kernel", ATTENTION)),
                   ("nvjet", ("matmul, cuBLAS kernel", "dense matmuls")),
                   ("gemm", ("matmul, cuBLAS kernel", "dense matmuls")),
                   ("memcpy", ("data movement", "data movement")),
                   ("memset", ("data movement", "data movement")))
NO_OP = "no HLO op (library kernel in a command buffer)"


def _trace_ops(events: list[dict], index: HloIndex):
    """(op, milliseconds) for each op event of a trace. On a CPU: the host events named after HLO
    instructions. On a GPU: each kernel on the device's streams, named by its `hlo_op`, else by the
    fusion the kernel is named after (`loop_add_fusion_3` for `loop_add_fusion.3`), else by the
    library that ran it (a `LIBRARY_KERNELS` class)."""
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and e["args"]["name"].startswith("/device:")}
    op_names = lambda *names: [n for n in names if n in index.instructions
                               and index.instructions[n].op not in CONTAINERS]
    for event in events:
        if event.get("ph") != "X" or (devices and event["pid"] not in devices):
            continue
        name, ms = event.get("name", ""), event["dur"] / 1e3
        if not devices:
            if op_names(name):
                yield name, ms
            continue
        found = op_names(event.get("args", {}).get("hlo_op"), name, re.sub(r"_(\d+)$", r".\1", name))
        yield (found[0] if found else
               next((cls for key, (cls, _) in LIBRARY_KERNELS if key in name.lower()), "other kernel")), ms


def summarize_trace(hlo_text: str, trace_path: str) -> dict:
    """Sums the durations of the HLO ops of a perfetto trace (.json.gz) by part, kind and HLO
    class."""
    index = HloIndex(hlo_text)
    with gzip.open(trace_path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    durations, counts = collections.Counter(), collections.Counter()
    for name, ms in _trace_ops(events, index):
        durations[name] += ms
        counts[name] += 1
    library = {cls: kind for _, (cls, kind) in LIBRARY_KERNELS} | {"other kernel": "other kernel"}
    parts, classes, top = collections.Counter(), collections.Counter(), []
    for name, ms in durations.most_common():
        if name in library:
            hlo_class, part, kind = name, NO_OP, library[name]
        else:
            stack = index.stack(index.instructions[name].frame)
            hlo_class = index.hlo_class(name)
            part, kind = _part(stack), _kind(stack, hlo_class)
        parts[(part, kind)] += ms
        classes[hlo_class] += ms
        if len(top) < 8:
            top.append([name, counts[name], hlo_class, part, kind, ms])
    return {"total_ms": sum(durations.values()), "parts": [[*k, v] for k, v in parts.most_common()],
            "classes": dict(classes), "top": top}


def profile_step(compiled, step, keep: str | None = None) -> dict:
    """Traces one call of `step` (runs `compiled` once, returns its seconds) and summarises the
    trace (`summarize_trace`), with XLA's cost analysis of the executable. `keep`: a folder to copy
    the raw perfetto trace and the compiled module's text (gzipped) into."""
    import jax
    text = compiled.as_text()
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            seconds = step()
        trace = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)[0]
        summary = summarize_trace(text, trace)
        if keep:
            shutil.copy(trace, os.path.join(keep, "perfetto_trace.json.gz"))
            with gzip.open(os.path.join(keep, "step_hlo.txt.gz"), "wt") as f:
                f.write(text)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    summary.update(step_s=seconds, xla_flops=cost.get("flops", 0.0),
                   xla_bytes=cost.get("bytes accessed", 0.0))
    return summary


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
        return profile_step(self.compiled, self.step)


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


def reply(**message) -> None:
    print(MARK + json.dumps(message), flush=True)


def peak_rss_gb() -> float:
    """Largest resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def worker(spec: str) -> int:
    """Builds the case, then answers `step`, `profile` and `quit` read from stdin."""
    case = Case(**json.loads(spec))
    runner = RUNNERS[case.framework](case)
    extra = {"hf_attention": runner.attention} if case.framework == "torch" else {}
    if case.framework == "jax":
        extra.update(grad_norms=runner.grad_norms, temp_gb=runner.temp_gb)
    reply(compile_s=runner.compile_s, flops=runner.flops, loss=runner.loss, rss_gb=peak_rss_gb(), **extra)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            reply(value=runner.step(), rss_gb=peak_rss_gb())
        elif command == "profile":
            reply(profile=runner.profile())
        else:
            break
    return 0


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, case: Case):
        self.case = case
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(dataclasses.asdict(case))],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info: dict = {}

    def read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"worker for {self.case.label} exited with {self.process.wait()}")

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        """Asks the worker to quit; kills it if it does not within a minute."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


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


def start_workers(cases: list[Case], workers: list[Worker]) -> None:
    """Starts a worker per case into `workers`, compiling in parallel; one after the other when
    the group holds a twlv model (each takes several GB while it compiles)."""
    one_by_one = any(c.objective == "twlv" and c.size != "tiny" for c in cases)
    for case in cases:
        workers.append(Worker(case))
        if one_by_one:
            workers[-1].info = workers[-1].read()
    for w in workers:
        w.info = w.info or w.read()
        print(f"   ready: {w.case.label} (compile + first step {w.info['compile_s']:.1f} s, "
              f"loss {w.info['loss']:.4f}, peak RSS {w.info['rss_gb']:.1f} GB)", flush=True)


def run_group(cases: list[Case], steps: int, warmup: int, profile: tuple[Case, ...] = ()) -> tuple:
    """Starts every case's worker, then interleaves their steps."""
    print(f"\n-- group: {', '.join(c.label for c in cases if c.framework != 'peak')}", flush=True)
    workers: list[Worker] = []
    try:
        start_workers(cases, workers)
        for _ in range(warmup):
            for w in workers:
                w.ask("step")
        values, rss = {w.case: [] for w in workers}, {}
        for round_ in range(steps):
            for w in workers:
                answer = w.ask("step")
                values[w.case].append(answer["value"])
                rss[w.case] = answer["rss_gb"]
            print(f"   round {round_ + 1}/{steps}: " + ", ".join(
                f"{w.case.label.split(' x')[0]} {values[w.case][-1]:.2f}" for w in workers
                if w.case.framework != "peak"), flush=True)
        profiles = {w.case: w.ask("profile")["profile"] for w in workers if w.case in profile}
    finally:
        for w in workers:
            w.close()
    results = [Result(w.case, values[w.case], w.info["compile_s"], w.info["flops"], w.info["loss"],
                      w.info.get("hf_attention", ""), tuple(w.info.get("grad_norms", ())),
                      w.info.get("temp_gb", 0.0), rss.get(w.case, w.info["rss_gb"])) for w in workers]
    return results, profiles


def peak_cases(precisions) -> list[Case]:
    return [Case("peak", precision=p) for p in precisions]


def plan(args) -> list[dict]:
    """The groups to run, each a list of cases measured side by side: per size and precision ours
    (on the largest size with its variants) with HF PyTorch for videomae; per size the twlv cases
    (on the largest size a group per precision, for memory). Profiles: ours, videomae, largest
    size."""
    groups = []
    largest = args.sizes[-1]

    def variants(size: str) -> list[str]:
        return ["", *VARIANTS] if size == largest and not args.no_variants else [""]

    for size in args.sizes:
        names = variants(size)
        for objective in args.objectives:
            batch = args.batch or BATCH[objective][size]
            steps = args.steps or STEPS[objective]
            if objective == "twlv":
                together = [args.precisions] if len(names) == 1 else [[p] for p in args.precisions]
                for precisions in together:
                    cases = [Case("jax", size, objective, p, batch, a) for p in precisions for a in names]
                    groups.append(dict(cases=cases + peak_cases(precisions), steps=steps, profile=()))
                continue
            for precision in args.precisions:
                cases = [Case("jax", size, objective, precision, batch, a, check=len(names) > 1)
                         for a in names]
                if not args.no_torch:
                    cases.append(Case("torch", size, objective, precision, batch))
                profile = () if args.no_profile or size != largest else (cases[0],)
                groups.append(dict(cases=cases + peak_cases([precision]), steps=steps, profile=profile))
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
    group."""
    rows = [f"| size | objective | precision | batch | step {variant} (s) | step ours (s) | speed-up | "
            f"MFU {variant} -> ours | XLA temp GB {variant} -> ours | peak RSS GB {variant} -> ours | "
            f"compile + first step (s) {variant} -> ours | grad-norm diff |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = index(results)
    for r in results:
        c = r.case
        ours = by_key.get(("jax", c.size, c.objective, c.precision, ""))
        if c.framework != "jax" or c.variant != variant or not ours:
            continue
        rows.append(f"| {c.size} | {c.objective} | {c.precision} | {c.batch} | {r.seconds:.3f} | "
                    f"{ours.seconds:.3f} | {r.seconds / ours.seconds:.2f}x | "
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


def profile_section(profiles: dict[Case, dict]) -> list[str]:
    lines = []
    for case, p in profiles.items():
        total = p["total_ms"]
        lines += ["", f"**{case.label}** (traced step {p['step_s']:.2f} s; op time summed over threads "
                  f"or GPU kernels {total / 1e3:.2f} s; XLA cost analysis: {p['xla_flops'] / 1e9:.0f} GFLOP, "
                  f"{p['xla_bytes'] / 1e9:.1f} GB accessed, loop bodies counted once)", "",
                  "| part of the step | kind of work | share of op time |", "|---|---|---:|"]
        shown = [row for row in p["parts"] if row[2] / total >= 0.015]
        lines += [f"| {part} | {kind} | {ms / total:.1%} |" for part, kind, ms in shown]
        rest = total - sum(row[2] for row in shown)
        lines.append(f"| (everything under 1.5% each) | | {rest / total:.1%} |")
        classes = "; ".join(f"{name} {ms / total:.0%}" for name, ms in
                            sorted(p["classes"].items(), key=lambda kv: -kv[1]))
        largest = "; ".join(f"`{name}` x{count} ({hlo_class}; {kind}; {part}) {ms / total:.1%}"
                            for name, count, hlo_class, part, kind, ms in p["top"][:5])
        lines += ["", f"By HLO op class: {classes}.", "", f"Largest ops: {largest}.", "",
                  f"In short: {profile_summary(p)}"]
    return lines


def profile_summary(p: dict) -> str:
    """Shares of op time: attention, matmuls (and how much of them ran on float32 inputs),
    data movement, optimizer."""
    total = p["total_ms"]
    kind_share = lambda kind: sum(ms for _, k, ms in p["parts"] if k == kind) / total
    matmul = sum(ms for name, ms in p["classes"].items() if name.startswith("matmul"))
    f32 = p["classes"].get("matmul, f32 inputs", 0.0)
    movement = p["classes"].get("data movement", 0.0) / total
    return (f"attention softmax(QKᵀ)V {kind_share(ATTENTION):.0%} of op time; ops with a matmul "
            f"{matmul / total:.0%} ({f32 / max(matmul, 1e-9):.0%} of that on float32-only inputs); "
            f"pure data movement (copies, converts, slices) {movement:.0%}; optimizer update "
            f"{kind_share('optimizer update'):.0%}.")


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
    if hf:
        lines += ["## Targets", "", *targets(results, peak), ""]
    if profiles:
        lines += ["## Profile: what the step spends its time on", "", PROFILE_NOTE,
                  *profile_section(profiles), ""]
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
PROFILE_NOTE = """One step traced with `jax.profiler.trace` after the timed steps. Each HLO op's trace events
are summed and attributed, through the compiled module's stack frames, to the line of `hybrid.losses`
it comes from (part) and the innermost library function (kind of work); backward ops count for the
forward code they differentiate, ops without source information (XLA's converts and copies of
whole parameter stacks) as unattributed. Op time is summed over XLA's threads. The matmul classes
name the element types the dots actually run in."""
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
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
        if not args.quick:
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
