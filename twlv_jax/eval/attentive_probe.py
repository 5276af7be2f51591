"""Attentive probe (V-JEPA's, as TWLV-I uses it): one learnable query cross-attends over a
frozen encoder's patch tokens, then a linear classifier.

The pooler is the encoder family's `AttentivePooler` (cross-attention with one query,
residual, MLP block); the classifier a `Dense` layer. Training follows TWLV-I's Table 4
for attentive probes: AdamW, lr 1e-3 with a cosine to 0 and no warm-up, weight decay
1e-5, batch 256, 20 epochs. The tokens stay in host memory; each step sends one batch.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from twlv_jax.eval.linear_probe import official_schedule
from twlv_jax.models.layers import Dense
from twlv_jax.models.vit import AttentivePooler

EVAL_BATCH = 256


class AttentiveClassifier(nnx.Module):
    """tokens (B, N, D) -> logits (B, C)."""

    def __init__(self, dim: int, heads: int, num_classes: int, *, rngs: nnx.Rngs):
        self.pooler = AttentivePooler(dim, heads, 4 * dim, rngs=rngs)
        self.head = Dense(dim, num_classes, ("embed", None), rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.head(self.pooler(tokens))


def default_heads(dim: int) -> int:
    """64-wide heads where the width allows, else one head."""
    return dim // 64 if dim % 64 == 0 and dim >= 64 else 1


def _functions(graphdef, optimizer):
    def loss_fn(params, tokens, labels):
        logits = nnx.merge(graphdef, params)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def train_step(params, opt_state, tokens, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, tokens):
        return nnx.merge(graphdef, params)(tokens).argmax(-1)
    return train_step, predict


def _accuracy(predict, params, tokens: np.ndarray, labels: np.ndarray) -> float:
    predictions = [np.asarray(predict(params, tokens[i:i + EVAL_BATCH]))
                   for i in range(0, len(tokens), EVAL_BATCH)]
    return float(np.mean(np.concatenate(predictions) == labels))


def attentive_probe(train_tokens: np.ndarray, train_y: np.ndarray, val_tokens: np.ndarray,
                    val_y: np.ndarray, *, heads: int | None = None, epochs: int = 20,
                    warmup_epochs: int = 0, lr: float = 1e-3, weight_decay: float = 1e-5,
                    batch_size: int = 256, seed: int = 0, num_classes: int | None = None,
                    progress: bool = True) -> dict:
    """Trains the probe on tokens (N, T, D) with labels (N,); evaluates on (M, T, D), (M,).

    Returns {'top1': val accuracy after the last epoch, 'loss': mean train loss per
    epoch, and the settings}. Deterministic under `seed`.
    """
    train_tokens = np.asarray(train_tokens, np.float32)
    val_tokens = np.asarray(val_tokens, np.float32)
    train_y, val_y = np.asarray(train_y, np.int32), np.asarray(val_y, np.int32)
    if train_tokens.ndim != 3 or val_tokens.shape[2:] != train_tokens.shape[2:]:
        raise ValueError(f"expected tokens (N, T, D) and (M, T, D), got {train_tokens.shape} "
                         f"and {val_tokens.shape}")
    dim = train_tokens.shape[2]
    heads = heads or default_heads(dim)
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    batch = min(batch_size, len(train_tokens))
    steps = len(train_tokens) // batch                                     # drop the last partial
    model = AttentiveClassifier(dim, heads, num_classes, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    optimizer = optax.adamw(official_schedule(lr, warmup_epochs * steps, epochs * steps),
                            weight_decay=weight_decay)
    opt_state = optimizer.init(params)
    train_step, predict = _functions(graphdef, optimizer)
    rng = np.random.default_rng(seed)
    losses = []
    bar = tqdm(range(epochs), desc="attentive probe", unit="epoch", disable=not progress,
               leave=False)
    for _ in bar:
        order = rng.permutation(len(train_tokens))[:steps * batch].reshape(steps, batch)
        total = 0.0
        for rows in order:
            params, opt_state, loss = train_step(params, opt_state, train_tokens[rows],
                                                 train_y[rows])
            total += float(loss)
        losses.append(total / steps)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return {"top1": _accuracy(predict, params, val_tokens, val_y), "loss": losses,
            "num_classes": num_classes, "heads": heads, "epochs": epochs,
            "warmup_epochs": warmup_epochs, "lr": lr, "weight_decay": weight_decay,
            "batch_size": batch, "steps_per_epoch": steps, "seed": seed}
