"""The registry of reconstruction targets: name -> `Target`, in a fixed order (the order of
their heads' initialisation and of the loss terms).

Adding a target is one module with a `Target` subclass (see `base.py` and the README) plus
one line below, or `register(...)` from code of your own.
"""

from __future__ import annotations

from twlv_jax.objectives.targets import distill, latent, pixel, video_teacher
from twlv_jax.objectives.targets.base import Batch, Target, Tokens

__all__ = ["REGISTRY", "Batch", "Target", "Tokens", "enabled", "register"]

REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Adds a target to the registry; its name must be new."""
    if target.name in REGISTRY:
        raise ValueError(f"a target named {target.name!r} is already registered")
    REGISTRY[target.name] = target
    return target


def enabled(objective) -> dict[str, Target]:
    """The targets an objective enables (weight > 0), in registry order."""
    return {name: REGISTRY[name] for name in REGISTRY if name in objective.weights}


register(distill.TARGET)
register(pixel.TARGET)
register(latent.TARGET)
register(video_teacher.TARGET)
