"""The train step compiled for a target's devices, and what it needs per device.

The state, teachers and batch are abstract (shapes and shardings, no memory); the step
is `twlv train`'s own (train/step.py jit_train_step), lowered and compiled, never run.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from twlv_jax.parallel.mesh import batch_sharding, make_mesh
from twlv_jax.plan.targets import Target, TargetError
from twlv_jax.train import flops
from twlv_jax.train import state as statelib
from twlv_jax.train import step as steplib
from twlv_jax.train.validate import total_steps, validate

# Steps in epochs need a dataset size; it only sets the schedules' constants, not what is
# compiled, so a nominal Kinetics-710-sized epoch stands in for it.
NOMINAL_EPOCH = 658_000


class DoesNotFit(RuntimeError):
    """The compiled step needs more memory per device than the target's chips have;
    `plan` is its plan when the compiler got that far (CPU and GPU targets)."""

    def __init__(self, message: str, plan: Plan | None = None):
        super().__init__(message)
        self.plan = plan


@dataclasses.dataclass
class Plan:
    target: Target
    mesh: dict                 # axis -> size
    bytes: dict                # kind -> bytes per device (parameters, optimizer, ...)
    flops: float               # analytic model FLOPs per step, global
    compile_s: float

    @property
    def total(self) -> float:
        return self.bytes["total"]


def size(n: float) -> str:
    """Bytes as '3.2 GiB' or '17.4 MiB'."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def per_device_bytes(tree) -> float:
    """Bytes one device holds of an abstract tree (ShapeDtypeStructs with shardings)."""
    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(tree)))


def _state_bytes(setup: statelib.Setup, video) -> dict:
    state = setup.abstract_state
    return {"parameters": per_device_bytes(state["params"]),
            "optimizer": per_device_bytes(state["opt"]),
            "ema": per_device_bytes(state.get("ema", {})),
            "teachers": per_device_bytes(setup.abstract_teachers),
            "batch": per_device_bytes(video)}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
            "code": m.generated_code_size_in_bytes,
            # What MaxText reports as in use: donated outputs reuse their arguments.
            "total": (m.argument_size_in_bytes + m.output_size_in_bytes
                      - m.alias_size_in_bytes + m.temp_size_in_bytes)}


def is_oom(error: Exception) -> bool:
    text = str(error).lower()
    return "resource_exhausted" in text or "hbm" in text


def prepare(config, devices: list) -> tuple[statelib.Setup, jax.ShapeDtypeStruct, dict]:
    """(setup, abstract batch, bytes per device of each kind of state) for `devices`; the
    same checks as `twlv train` (validation, the share of parameters left unsharded)."""
    validate(config, len(devices))
    mesh = make_mesh(config.mesh.shape, devices)
    steps, warmup = total_steps(config, NOMINAL_EPOCH)
    setup = statelib.build(config, mesh, total_steps=steps, warmup_steps=warmup)
    statelib.unsharded_check(setup, config.train.unsharded_limit)
    m = config.model
    video = jax.ShapeDtypeStruct((config.train.batch_size, m.frames, m.image_size, m.image_size, 3),
                                 jnp.uint8, sharding=batch_sharding(mesh))
    return setup, video, _state_bytes(setup, video)


def compile_plan(config, target: Target, devices: list) -> Plan:
    """Compiles the train step of `config` for `devices`; DoesNotFit when it needs more
    memory per device than `target.memory` (TPUs say so while compiling)."""
    setup, video, state_bytes = prepare(config, devices)
    start = time.perf_counter()
    try:
        compiled = steplib.jit_train_step(setup).lower(
            setup.abstract_state, setup.abstract_teachers, video, 0.0).compile()
    except Exception as error:  # XLA raises its own runtime error type for an OOM
        if is_oom(error):
            raise DoesNotFit(str(error).strip().splitlines()[0]) from None
        if "cuDNN not found" in str(error):
            raise TargetError(f"{target.text}: the step uses cuDNN's fused attention "
                              "(model.attention=auto in bfloat16), whose version check needs "
                              "the cuDNN library: pip install nvidia-cudnn-cu12 beside "
                              "jax-cuda12-plugin") from None
        raise
    plan = Plan(target, dict(setup.mesh.shape), {**state_bytes, **_memory(compiled)},
                flops.step_flops(config, setup.objective), time.perf_counter() - start)
    if plan.total > target.memory:
        raise DoesNotFit(f"the step needs {size(plan.total)} per device, the target's devices "
                         f"have {size(target.memory)}", plan)
    return plan
