"""The sharded train step: hybrid loss, gradients, AdamW update, EMA, metrics."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from twlv_jax.objectives import hybrid
from twlv_jax.objectives.targets.latent import ema_momentum, ema_update
from twlv_jax.parallel.mesh import batch_sharding, microbatch_sharding, replicated
from twlv_jax.parallel.sharding import use_rules
from twlv_jax.train.state import Setup


def frozen_modules(setup: Setup, state: dict, teachers: dict):
    """(the frozen teachers, the EMA student or None) as modules, from their parameters."""
    frozen = {name: nnx.merge(setup.teacher_defs[name], params) for name, params in teachers.items()}
    ema = nnx.merge(setup.student_def, state["ema"]) if "ema" in state else None
    return frozen, ema


def loss_and_grads(setup: Setup, state: dict, teachers: dict, video: jax.Array, poison=0.0):
    """(total loss, {term: loss}, grads of the trainable params) for one batch of uint8 clips.

    With `train.microbatches` = M > 1 the batch runs as M sequential microbatches (a scan)
    whose losses and gradients are averaged: the memory of one microbatch, the update of the
    whole batch. Microbatch m takes clips m, m + M, m + 2M, ..., so that each device keeps
    its own clips, and every clip gets the mask it gets in the whole batch.

    `poison` is added to every loss term, and with `train.inject_nan_into=grads` to every
    gradient too: 0 normally; the loop's fault injection (`train.inject_nan_batches`)
    passes NaN to stand for a batch that breaks the numerics (the parameters then become
    non-finite as well).
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    frozen, ema = frozen_modules(setup, state, teachers)

    def loss_fn(params, clips, samples):
        model = nnx.merge(setup.model_def, params)
        terms = hybrid.losses(model, frozen, ema, clips, rng, setup.objective, setup.config,
                              samples)
        terms = {name: value + poison for name, value in terms.items()}
        return hybrid.total(terms, setup.objective), terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    count = setup.config.train.microbatches
    if count == 1:
        (loss, terms), grads = grad_fn(state["params"], video, None)
    else:
        batch = video.shape[0]
        # (B, ...) -> (B/M, M, ...) -> (M, B/M, ...): microbatch m is clips m, m + M, ...
        micro = jnp.swapaxes(video.reshape(batch // count, count, *video.shape[1:]), 0, 1)
        micro = jax.lax.with_sharding_constraint(micro, microbatch_sharding(setup.mesh))
        samples = jnp.arange(batch).reshape(batch // count, count).T          # (M, B/M)

        def accumulate(total, xs):
            return jax.tree.map(jnp.add, total, grad_fn(state["params"], *xs)), None

        shapes = jax.eval_shape(grad_fn, state["params"], micro[0], samples[0])
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        total, _ = jax.lax.scan(accumulate, zeros, (micro, samples))
        (loss, terms), grads = jax.tree.map(lambda x: x / count, total)
    if setup.config.train.inject_nan_into == "grads":
        grads = jax.tree.map(lambda g: g + poison, grads)
    return loss, terms, grads


def eval_losses(setup: Setup, state: dict, teachers: dict, video: jax.Array, seed):
    """({term: loss}, {term: trivial baseline}) on a batch without updating anything.

    Masks come from `seed` (an int32 scalar) instead of the state's stream, so held-out
    clips are scored on the same masks at every step. Stochastic depth is off.
    """
    rng = jax.random.key(seed)
    frozen, ema = frozen_modules(setup, state, teachers)
    model = nnx.merge(setup.model_def, state["params"])
    pairs = hybrid.predictions(model, frozen, ema, video, rng, setup.objective, setup.config,
                               train=False)
    return hybrid.loss_terms(pairs, setup.objective), hybrid.baselines(pairs, setup.objective)


def train_step(setup: Setup, state: dict, teachers: dict, video: jax.Array, poison):
    """One optimizer step. Returns (new state, metrics)."""
    loss, terms, grads = loss_and_grads(setup, state, teachers, video, poison)
    with jax.named_scope("optimizer"):
        updates, opt = setup.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
    new_state = dict(state, step=state["step"] + 1, params=params, opt=opt)
    # update_norm: the norm of the parameters' change, new - old (reading the updates once
    # more instead would keep them in memory: a 1.2x slower optimizer update on CPU).
    change = jax.tree.map(jnp.subtract, params, state["params"])
    metrics = {"loss": loss, **{f"loss/{name}": value for name, value in terms.items()},
               "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
               "update_norm": optax.tree.norm(change), "lr": setup.lr(state["step"])}
    if "ema" in state:
        start, end = hybrid.ema_schedule(setup.config, setup.objective)
        momentum = ema_momentum(state["step"], setup.total_steps, start, end)
        with jax.named_scope("ema_update"):
            new_state["ema"] = ema_update(state["ema"], params["student"], momentum)
        metrics["ema_momentum"] = momentum
    return new_state, jax.tree.map(lambda x: x.astype(jnp.float32), metrics)


class Sharded:
    """A jitted function of (state, teachers, video, *scalars) with explicit shardings,
    traced under the run's logical axis rules."""

    def __init__(self, setup: Setup, fn, out_shardings, *, scalars: int = 0, donate_argnums=()):
        self.mesh, self.rules = setup.mesh, setup.config.mesh.rules
        in_shardings = (setup.state_shardings, setup.teacher_shardings, batch_sharding(self.mesh),
                        *[replicated(self.mesh)] * scalars)
        self.jitted = jax.jit(functools.partial(fn, setup), in_shardings=in_shardings,
                              out_shardings=out_shardings, donate_argnums=donate_argnums)

    def __call__(self, *args):
        with use_rules(self.mesh, self.rules):
            return self.jitted(*args)

    def lower(self, *args):
        with use_rules(self.mesh, self.rules):
            return self.jitted.lower(*args)


def jit_train_step(setup: Setup) -> Sharded:
    """f(state, teachers, video, poison) -> (state, metrics); the state is donated."""
    return Sharded(setup, train_step, (setup.state_shardings, replicated(setup.mesh)), scalars=1,
                   donate_argnums=0)


def jit_eval(setup: Setup) -> Sharded:
    """f(state, teachers, video, seed) -> ({term: loss}, {term: baseline})."""
    return Sharded(setup, eval_losses, replicated(setup.mesh), scalars=1)


def jit_grads(setup: Setup) -> Sharded:
    """f(state, teachers, video) -> (loss, terms, grads), without an update."""
    rep = replicated(setup.mesh)
    return Sharded(setup, loss_and_grads, (rep, rep, setup.state_shardings["params"]))
