"""The benchmarks' profiler (benchmarks/step_profile.py): ops attributed by named scopes."""

import importlib.util
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models.layers import Block

_spec = importlib.util.spec_from_file_location(
    "step_profile", pathlib.Path(__file__).parents[1] / "benchmarks" / "step_profile.py")
step_profile = sys.modules["step_profile"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_profile)


def test_op_names_give_the_scopes_of_the_step():
    scopes = step_profile.scopes
    assert scopes("jit(train_step)/transpose(jvp(target/pixel))/matmul/bnd,do->bno/dot_general") == (
        ["target", "pixel", "matmul"], True)
    assert scopes("jit(train_step)/jvp(target/latent)/ema_student/while/body/closed_call/"
                  "attention/exp") == (
        ["target", "latent", "ema_student", "while", "body", "closed_call", "attention"], False)
    # JAX's own jitted helpers, and fused ops that name several ops (the first counts).
    assert scopes("jit(train_step)/jvp(mask)/jit(_gumbel)/jit(_uniform)/while/body/add") == (
        ["mask"], False)
    assert scopes("jit(train_step)/jit(_threefry_fold_in)/loss_and_grads/while") == ([], False)
    assert scopes("transpose(jvp(target/distill))/layernorm/reduce_sum") == (
        ["target", "distill", "layernorm"], True)
    assert scopes("jit(train_step)/transpose(jvp(loss/pixel))/mul;jit(train_step)/add") == (
        ["loss", "pixel"], True)
    part, kind = step_profile.part, step_profile.kind
    assert part(["target", "latent", "ema_student", "while", "body", "matmul"]) == "target/latent/ema_student"
    assert part(["while", "body", "closed_call", "student", "layernorm"]) == "student"
    assert part([]) == step_profile.NO_PART
    assert kind(["student", "attention", "matmul"], "elementwise/reduce") == "dense matmuls"
    assert kind(["optimizer"], "elementwise/reduce") == "elementwise/reduce"


def test_a_traced_step_is_attributed_to_its_parts_and_kinds_forward_and_backward():
    block = Block(32, 2, 64, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block, nnx.Param)
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))

    def step(params, x):
        def loss(params):
            with jax.named_scope("student"):
                y = nnx.merge(graphdef, params)(x)
            with jax.named_scope("loss/pixel"):
                return jnp.mean(jnp.square(y))
        grads = jax.grad(loss)(params)
        with jax.named_scope("optimizer"):
            return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    compiled = jax.jit(step).lower(params, x).compile()

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        return time.perf_counter() - start

    profile = step_profile.profile_step(compiled, run)
    rows = {(part, kind): (forward, backward) for part, kind, forward, backward in profile["parts"]}
    assert {part for part, _ in rows} <= {"student", "loss/pixel", "optimizer", step_profile.NO_PART}
    for kind in (step_profile.ATTENTION, "dense matmuls", "layernorm", "GELU"):
        forward, backward = rows[("student", kind)]
        assert forward > 0 and backward > 0, kind
    assert sum(f for (part, _), (f, _) in rows.items() if part == "optimizer") > 0
    assert all(b == 0 for (part, _), (_, b) in rows.items() if part == "optimizer")
    assert abs(sum(f + b for f, b in rows.values()) - profile["total_ms"]) < 1e-6 * profile["total_ms"]
    assert profile["xla_flops"] > 0
