"""What a reconstruction target declares, and what it is given at each step.

A target is one module with one `Target` subclass instance: its parameters (`head`), its
(prediction, target) pair for a batch (`predict`), its loss, its config checks, its FLOPs,
and any frozen model (`teacher`) or EMA student (`uses_ema`) it needs. `hybrid`, `presets`,
`train.state`, `train.step` and `train.flops` iterate over the enabled targets and never
name one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from twlv_jax.models.vit import VideoViT


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token counts of a masked clip: all tokens, the visible ones, and the values per token."""

    total: int            # N
    visible: int          # K
    patch_dim: int        # t*p*p*3


@dataclasses.dataclass(frozen=True)
class Batch:
    """What `Target.predict` is given: the clips, the mask and the student's masked pass."""

    video: jax.Array                    # (B, T, H, W, 3) uint8
    x: jax.Array                        # (B, T, H, W, 3) float32, normalised student input
    keep: jax.Array                     # (B, K) visible token indices
    masked: jax.Array                   # (B, M) masked token indices
    grid: tuple[int, int, int]          # (T', H', W') tokens
    student: VideoViT
    tokens: jax.Array                   # (B, K, D) the student's normed output tokens
    layers: dict                        # {layer index: (B, K, D)} before the final norm
    frozen: dict[str, nnx.Module]       # teachers by name, 'ema_student' when one is used
    image_teacher_layers: jax.Array | None   # (L, B, N, P) last L layers, per tubelet
    rng: jax.Array                      # for the target's own sampling
    config: object

    def student_layers(self, indices: list[int]) -> jax.Array:
        """The student's layers `indices` through its final norm: (L, B, K, D)."""
        return jnp.stack([self.student.norm(self.layers[i]) for i in indices])


def last_layers(depth: int, count: int) -> list[int]:
    """Indices of the last `count` of `depth` layers."""
    return list(range(depth - count, depth))


class Target:
    """Base of a reconstruction target; subclasses set `name` and `loss` and implement
    `head`, `predict` and `flops`. The defaults suit a target with no teacher and no EMA."""

    name: str
    loss: Callable[[jax.Array, jax.Array], jax.Array]     # (prediction, target) -> scalar
    # Keys of its config block that shape its parameters (a resume must keep them).
    state_keys: tuple[str, ...] = ()
    uses_ema: bool = False              # needs an EMA copy of the student (`frozen['ema_student']`)
    teacher_key: str | None = None      # config block of its frozen teacher (variant, weights)

    def defaults(self, tiny: bool) -> dict:
        """Its `objective.<name>` block besides `weight`, for targets configs/pretrain.py does
        not list."""
        return {}

    def check(self, config) -> list[str]:
        """Problems with its config block, each saying what to change."""
        return []

    def head(self, config, student: VideoViT, *, rngs: nnx.Rngs) -> nnx.Module:
        """Its trained parameters."""
        raise NotImplementedError

    def student_layers(self, config, depth: int) -> list[int]:
        """Indices of the student's intermediate layers that `predict` reads."""
        return []

    def image_teacher_layers(self, config) -> int:
        """How many of the image teacher's last layers `predict` reads (0: none)."""
        return 0

    def teacher(self, config, encoder_kwargs: dict) -> nnx.Module | None:
        """Its frozen teacher at random init (weights load from `<teacher_key>.weights`)."""
        return None

    def predict(self, head: nnx.Module, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(prediction, target) for a batch; the target carries no gradient."""
        raise NotImplementedError

    def ema_schedule(self, config) -> tuple[float, float]:
        """(start, end) momentum of the EMA student when `uses_ema`."""
        raise NotImplementedError

    def flops(self, config, tokens: Tokens) -> tuple[float, float]:
        """Forward FLOPs per clip: (trained head, frozen models it runs)."""
        raise NotImplementedError
