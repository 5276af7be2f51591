"""The registry of reconstruction targets: name -> `Target`, in a fixed order (the order of
their heads' initialisation and of the loss terms).

Adding a target is one module with a `Target` subclass (see `base.py` and the README) plus
one line below, or `register(...)` from code of your own.
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

from twlv_jax.objectives.targets import distill, flow, latent, pixel, video_teacher
from twlv_jax.objectives.targets.base import Batch, Target, Tokens

__all__ = ["REGISTRY", "Batch", "Target", "Tokens", "add_config_blocks", "enabled", "register"]

REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Adds a target to the registry; its name must be new."""
    if target.name in REGISTRY:
        raise ValueError(f"a target named {target.name!r} is already registered")
    REGISTRY[target.name] = target
    return target


def add_config_blocks(objective_cfg: ConfigDict, tiny: bool) -> None:
    """Adds `objective.<name>` (weight unset, then the target's `defaults`) for every
    registered target that the config does not list."""
    for name, target in REGISTRY.items():
        if name not in objective_cfg:
            objective_cfg[name] = ConfigDict(dict(weight=config_dict.placeholder(float),
                                                  **target.defaults(tiny)))


def enabled(objective) -> dict[str, Target]:
    """The targets an objective enables (weight > 0), in registry order."""
    return {name: REGISTRY[name] for name in REGISTRY if name in objective.weights}


register(distill.TARGET)
register(pixel.TARGET)
register(latent.TARGET)
register(video_teacher.TARGET)
register(flow.TARGET)
