"""The official linear probe (`linear_probing/main.py` of the TWLV-I evaluation code) in JAX.

One linear layer (D -> C, PyTorch's default init) trained with cross-entropy and Adam;
the learning rate warms up linearly over `warmup_epochs` (lr * (step + 1) / warmup
steps) then follows a cosine to 0, per step. Each epoch shuffles the training videos
into batches of `batch_size`, dropping the last partial batch (a set smaller than one
batch is one batch). With `train_groups` (clip mode) a video contributes one random
clip per epoch; with `val_groups` a video's prediction is the mean softmax over its clips.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from twlv_jax.eval.grouping import pool_by_group

VAL_EVERY = 10  # epochs between validations, as the official `--val_interval`


def official_schedule(lr: float, warmup_steps: int, total_steps: int):
    """lr * (step + 1) / warmup during warm-up, then a cosine from lr to 0 (per step)."""
    def schedule(step):
        warm = lr * (step + 1) / max(warmup_steps, 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, 0.5 * lr * (1 + jnp.cos(jnp.pi * progress)))
    return schedule


def _clip_table(groups: np.ndarray | None, count: int) -> tuple[np.ndarray, ...]:
    """(rows sorted by video, first sorted position, clip count) per training video."""
    if groups is None:
        return np.arange(count), np.arange(count), np.ones(count, np.int64)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    return order, np.concatenate([[0], np.cumsum(counts)[:-1]]), counts


def _epoch_fn(optimizer, steps: int, batch: int):
    """jit(params, opt_state, key, data...) -> (params, opt_state, mean loss): one epoch."""
    def loss_fn(params, x, y):
        logits = x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def epoch(params, opt_state, key, x_all, y_video, order, first, counts):
        key_perm, key_clip = jax.random.split(key)
        videos = jax.random.permutation(key_perm, len(first))[:steps * batch]
        videos = videos.reshape(steps, batch)                                    # (S, B)
        pick = jax.random.randint(key_clip, videos.shape, 0, counts[videos])    # a clip each
        rows = order[first[videos] + pick]                                       # (S, B)

        def step(carry, batch_rows):
            params, opt_state = carry
            rows, vids = batch_rows
            loss, grads = jax.value_and_grad(loss_fn)(params, x_all[rows], y_video[vids])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (rows, videos))
        return params, opt_state, losses.mean()
    return jax.jit(epoch)


def predict_proba(params: dict, x: np.ndarray) -> np.ndarray:
    """Softmax (N, C) of the linear layer."""
    logits = np.asarray(x, np.float32) @ np.asarray(params["w"]) + np.asarray(params["b"])
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


def _top1(params, x, y, groups) -> float:
    probs, labels = pool_by_group(predict_proba(params, x), y, groups, reduce="mean")
    return float(np.mean(probs.argmax(1) == labels))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, *, epochs: int = 150, warmup_epochs: int = 10,
                 lr: float = 1e-3, batch_size: int = 1024, seed: int = 0,
                 train_groups: np.ndarray | None = None, val_groups: np.ndarray | None = None,
                 num_classes: int | None = None, progress: bool = True) -> dict:
    """Trains the probe on rows `train_x` (N, D) with labels `train_y` (N,); evaluates on
    `val_x` (M, D), `val_y` (M,). Groups (clip mode) are the video of each row.

    Returns {'top1': final val accuracy over videos, 'history': [{'epoch', 'top1'}] every
    10 epochs and at the end, 'loss': mean train loss per epoch, 'params': {'w', 'b'},
    and the settings}. Deterministic under `seed`.
    """
    train_x, val_x = np.asarray(train_x, np.float32), np.asarray(val_x, np.float32)
    train_y, val_y = np.asarray(train_y, np.int64), np.asarray(val_y, np.int64)
    if train_x.ndim != 2 or val_x.ndim != 2 or train_x.shape[1] != val_x.shape[1]:
        raise ValueError(f"expected train (N, D) and val (M, D) rows, got {train_x.shape} and "
                         f"{val_x.shape}")
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    _, video_labels = pool_by_group(np.zeros((len(train_y), 1)), train_y, train_groups)
    order, first, counts = _clip_table(train_groups, len(train_x))
    videos = len(first)
    batch = min(batch_size, videos)
    steps = videos // batch                                                # drop_last
    schedule = official_schedule(lr, warmup_epochs * steps, epochs * steps)
    optimizer = optax.adam(schedule)

    dim = train_x.shape[1]
    key_w, key_b, key = jax.random.split(jax.random.key(seed), 3)
    bound = 1 / math.sqrt(dim)                                             # nn.Linear init
    params = {"w": jax.random.uniform(key_w, (dim, num_classes), jnp.float32, -bound, bound),
              "b": jax.random.uniform(key_b, (num_classes,), jnp.float32, -bound, bound)}
    opt_state = optimizer.init(params)
    run_epoch = _epoch_fn(optimizer, steps, batch)
    data = (jnp.asarray(train_x), jnp.asarray(video_labels), jnp.asarray(order),
            jnp.asarray(first), jnp.asarray(counts))
    losses, history = [], []
    bar = tqdm(range(1, epochs + 1), desc="linear probe", unit="epoch", disable=not progress,
               leave=False)
    for epoch in bar:
        params, opt_state, loss = run_epoch(params, opt_state, jax.random.fold_in(key, epoch),
                                            *data)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if epoch % VAL_EVERY == 0 or epoch == epochs:
            history.append({"epoch": epoch, "top1": _top1(params, val_x, val_y, val_groups)})
    params = {k: np.asarray(v) for k, v in params.items()}
    return {"top1": history[-1]["top1"] if history else _top1(params, val_x, val_y, val_groups),
            "history": history, "loss": losses, "params": params,
            "num_classes": num_classes, "epochs": epochs, "warmup_epochs": warmup_epochs,
            "lr": lr, "batch_size": batch, "steps_per_epoch": steps, "seed": seed}
