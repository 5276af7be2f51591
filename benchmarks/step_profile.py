"""What one compiled step spends its time on: the ops of a `jax.profiler` trace, attributed by
the `jax.named_scope` names in the compiled module's op metadata (`op_name`).

- Part of the step: the scopes of `objectives/hybrid.py` and `train/step.py` (`input`,
  `image_teacher`, `mask`, `student`, `target/<name>` with its frozen model, e.g.
  `target/latent/ema_student`, `loss/<name>`, `optimizer`, `ema_update`); forward or backward
  from autodiff's `transpose(...)` in the name.
- Kind of work: the innermost scope of `models/layers.py` (`KINDS`), else the HLO op's class
  (a matmul and the element types it reads, data movement, or elementwise/reduce).

Used by `train_step.py` (CPU) and `gpu_step.py` (GPU); the report's tables are
`profile_section`.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import shutil
import tempfile

HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?[\]\})] ([a-z][a-z0-9\-]*)\((.*)$")
HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
CONTAINERS = {"while", "call", "conditional"}
MOVEMENT = {"copy", "transpose", "dynamic-slice", "dynamic-update-slice", "slice", "concatenate", "pad",
            "gather", "scatter", "broadcast", "reshape", "bitcast", "parameter", "constant", "tuple",
            "get-tuple-element", "iota", "reverse", "convert"}
ATTENTION = "attention softmax(QKᵀ)V"
# The model's scopes (models/layers.py) -> kind of work.
KINDS = {"attention": ATTENTION, "matmul": "dense matmuls", "layernorm": "layernorm", "gelu": "GELU",
         "quick_gelu": "GELU", "drop_path": "drop path",
         "layer_slices": "stacked layers: weight slices, stacking"}
# Scopes JAX itself adds to op names (loop bodies, calls, remat), never a part of the step.
JAX_SCOPES = {"while", "body", "cond", "closed_call", "checkpoint", "remat", "rematted_computation",
              "custom_jvp_call", "custom_vjp_call", "shard_map", "branch"}
NO_PART = "(outside the named parts: metrics, random keys)"
# GPU kernels that name no HLO op (inside a command buffer every kernel names the buffer), by the
# library that ran them: name fragment -> (HLO op class, kind of work)
LIBRARY_KERNELS = (("cudnn", ("cuDNN kernel", ATTENTION)), ("sdpa", ("cuDNN kernel", ATTENTION)),
                   ("nvjet", ("matmul, cuBLAS kernel", "dense matmuls")),
                   ("gemm", ("matmul, cuBLAS kernel", "dense matmuls")),
                   ("memcpy", ("data movement", "data movement")),
                   ("memset", ("data movement", "data movement")))
NO_OP = "no HLO op (library kernel in a command buffer)"


@dataclasses.dataclass(frozen=True)
class Instruction:
    op: str
    dtype: str                  # element type of the result ('' for tuples)
    operands: tuple[str, ...]
    calls: tuple[str, ...]      # computations it runs (fusion bodies, loop bodies, reducers)
    op_name: str                # JAX's name of the op: scopes, transforms, primitive


class HloIndex:
    """Instructions of a compiled module's text: op, result type, called computations, op_name."""

    def __init__(self, text: str):
        self.computations: dict[str, list[str]] = {}
        self.instructions: dict[str, Instruction] = {}
        current = None
        for line in text.split("\n"):
            if m := HLO_COMPUTATION.match(line):
                current = m[1]
                self.computations[current] = []
            elif (m := HLO_INSTRUCTION.match(line)) and current:
                dtype = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[", line)
                op_name = re.search(r'op_name="([^"]*)"', m[3])
                self.computations[current].append(m[1])
                self.instructions[m[1]] = Instruction(
                    m[2], dtype[1] if dtype else "", tuple(re.findall(r"%([\w.\-]+)", m[3].split(")")[0])),
                    tuple(re.findall(r"(?:calls|body|to_apply)=%([\w.\-]+)", m[3])),
                    op_name[1] if op_name else "")

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


def scopes(op_name: str) -> tuple[list[str], bool]:
    """(named scopes from outermost to innermost, whether the op is autodiff's backward) of an
    op_name such as 'jit(train_step)/transpose(jvp(target/pixel))/matmul/bnd,do->bno/dot_general'.
    Dropped: the outermost jit(...) (ops in loop bodies may name none), the transform wrappers,
    einsum specs, the primitive (the last name), and everything from a nested jit(...) on (JAX's
    own jitted helpers, e.g. random key splits). A fused op that names several ops ('a;b') counts
    for the first."""
    name = op_name.split(";")[0]
    if name.startswith("jit("):
        name = name.partition("/")[2]
    nested = name.find("jit(")
    name = name if nested < 0 else name[:nested]
    backward = "transpose(" in name
    names = re.sub(r"\b\w+\(", "", name).replace(")", "").split("/")
    names = names[:-1] if nested < 0 else names
    return [n for n in names if n and "->" not in n], backward


def part(names: list[str]) -> str:
    """The part of the step: the first run of scopes that are neither a kind of work nor JAX's
    (those of a loop over microbatches, say, come first)."""
    leading = []
    for name in names:
        if name in KINDS or (name in JAX_SCOPES and leading):
            break
        if name not in JAX_SCOPES:
            leading.append(name)
    return "/".join(leading) or NO_PART


def kind(names: list[str], hlo_class: str) -> str:
    """The kind of work: the innermost model scope, else the HLO op's class."""
    return next((KINDS[n] for n in reversed(names) if n in KINDS), hlo_class)


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
    """Durations of the HLO ops of a perfetto trace (.json.gz) summed by part and kind of work
    (forward and backward apart), by HLO class, and the largest ops."""
    index = HloIndex(hlo_text)
    with gzip.open(trace_path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    durations, counts = collections.Counter(), collections.Counter()
    for name, ms in _trace_ops(events, index):
        durations[name] += ms
        counts[name] += 1
    library = {cls: kind for _, (cls, kind) in LIBRARY_KERNELS} | {"other kernel": "other kernel"}
    parts = collections.defaultdict(lambda: [0.0, 0.0])
    classes, top = collections.Counter(), []
    for name, ms in durations.most_common():
        if name in library:
            hlo_class, where, work, backward = name, NO_OP, library[name], False
        else:
            names, backward = scopes(index.instructions[name].op_name)
            hlo_class = index.hlo_class(name)
            where, work = part(names), kind(names, hlo_class)
        parts[(where, work)][backward] += ms
        classes[hlo_class] += ms
        if len(top) < 8:
            top.append([name, counts[name], hlo_class, where + (" (backward)" if backward else ""),
                        work, ms])
    rows = sorted(([*key, *ms] for key, ms in parts.items()), key=lambda r: -(r[2] + r[3]))
    return {"total_ms": sum(durations.values()), "parts": rows, "classes": dict(classes), "top": top}


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


NOTE = """Each HLO op's trace events are summed and attributed by the `jax.named_scope` names in the
compiled module's op metadata: the part of the step (the scopes of `objectives/hybrid.py` and
`train/step.py`; a target's frozen model nested in it, e.g. `target/latent/ema_student`), forward
or backward (autodiff's transposed ops), and the kind of work (the innermost scope of
`models/layers.py`, else the op's HLO class). A fused op counts for the scope of the op it was
fused into. The matmul classes name the element types the dots actually run in."""


def profile_section(profiles: dict) -> list[str]:
    """Markdown for each {case (with a `label`): profile}: the parts table, the shares by part and
    by HLO class, the largest ops, a summary."""
    lines = []
    for case, p in profiles.items():
        total = p["total_ms"]
        lines += ["", f"**{case.label}** (traced step {p['step_s']:.2f} s; op time summed over threads "
                  f"or GPU kernels {total / 1e3:.2f} s; XLA cost analysis: {p['xla_flops'] / 1e9:.0f} GFLOP, "
                  f"{p['xla_bytes'] / 1e9:.1f} GB accessed, loop bodies counted once)", "",
                  "| part of the step | kind of work | forward | backward | share of op time |",
                  "|---|---|---:|---:|---:|"]
        shown = [row for row in p["parts"] if (row[2] + row[3]) / total >= 0.015]
        lines += [f"| {where} | {work} | {fwd / total:.1%} | {bwd / total:.1%} | {(fwd + bwd) / total:.1%} |"
                  for where, work, fwd, bwd in shown]
        rest = total - sum(row[2] + row[3] for row in shown)
        lines.append(f"| (everything under 1.5% each) | | | | {rest / total:.1%} |")
        by_part = collections.Counter()
        for where, _, fwd, bwd in p["parts"]:
            by_part[where] += fwd + bwd
        parts = "; ".join(f"{where} {ms / total:.0%}" for where, ms in by_part.most_common())
        classes = "; ".join(f"{name} {ms / total:.0%}" for name, ms in
                            sorted(p["classes"].items(), key=lambda kv: -kv[1]))
        largest = "; ".join(f"`{name}` x{count} ({hlo_class}; {work}; {where}) {ms / total:.1%}"
                            for name, count, hlo_class, where, work, ms in p["top"][:5])
        lines += ["", f"By part: {parts}.", "", f"By HLO op class: {classes}.", "",
                  f"Largest ops: {largest}.", "", f"In short: {summary(p)}"]
    return lines


def summary(p: dict) -> str:
    """Shares of op time: attention, matmuls (and how much of them ran on float32 inputs),
    data movement, optimizer, backward."""
    total = p["total_ms"]
    share = lambda keep: sum(fwd + bwd for where, work, fwd, bwd in p["parts"] if keep(where, work)) / total
    matmul = sum(ms for name, ms in p["classes"].items() if name.startswith("matmul"))
    f32 = p["classes"].get("matmul, f32 inputs", 0.0)
    movement = p["classes"].get("data movement", 0.0) / total
    backward = sum(bwd for *_, bwd in p["parts"]) / total
    return (f"attention softmax(QKᵀ)V {share(lambda _, work: work == ATTENTION):.0%} of op time; ops "
            f"with a matmul {matmul / total:.0%} ({f32 / max(matmul, 1e-9):.0%} of that on float32-only "
            f"inputs); pure data movement (copies, converts, slices) {movement:.0%}; optimizer "
            f"{share(lambda where, _: where == 'optimizer'):.0%}; backward ops {backward:.0%}.")
