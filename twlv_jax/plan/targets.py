"""Plan targets: `cpu:N`, `tpu:<chip>:<topology>`, `gpu:<card>:<count>`.

TPU topologies compile on any machine with libtpu installed (`make plan-tpu`), through
`jax.experimental.topologies`; GPU targets need the CUDA plugin and a target description
(XLA's gpu_specs); CPU targets use this process's CPU devices.
"""

from __future__ import annotations

import dataclasses
import math
import os

GIB = 2**30

# chip -> (libtpu's topology prefix, HBM bytes per device, dense bf16 FLOP/s per device)
TPUS = {
    "v4": ("v4", 32 * GIB, 275e12),
    "v5e": ("v5e", 16 * GIB, 197e12),
    "v5p": ("v5", 95 * GIB, 459e12),          # libtpu names v5p slices v5:AxBxC (megacore)
    "v6e": ("v6e", 32 * GIB, 918e12),
}
# card -> (HBM bytes, dense bf16 FLOP/s, XLA device description)
GPUS = {
    "h100": (84978434048, 989e12, "NVIDIA H100 80GB HBM3"),
    "h200": (150754820096, 989e12, "NVIDIA H200"),
}
# XLA's gpu_specs/h100_sxm.txtpb (the H200 shares the core; its memory differs).
GPU_SPEC = """gpu_device_info {{ threads_per_block_limit: 1024 threads_per_warp: 32
  shared_memory_per_block: 49152 shared_memory_per_core: 233472 threads_per_core_limit: 2048
  core_count: 132 fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536
  registers_per_block_limit: 65536 }}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{name}"
"""
USAGE = ("expected cpu:N, tpu:CHIP:TOPOLOGY (CHIP one of " + ", ".join(TPUS)
         + "; e.g. tpu:v5e:16x16, tpu:v5p:2x2x1) or gpu:CARD:N (CARD one of "
         + ", ".join(GPUS) + ")")


class TargetError(ValueError):
    """A target that cannot be named or set up here; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Target:
    text: str
    platform: str                # cpu | tpu | gpu
    chip: str
    topology: str                # '16x16' for TPUs, the device count otherwise
    num_devices: int
    memory: float                # bytes per device
    peak: float                  # bf16 FLOP/s per device; 0: measured (CPU)


def _count(text: str, target: str) -> int:
    try:
        dims = [int(d) for d in text.split("x")]
    except ValueError:
        raise TargetError(f"target {target!r}: {text!r} is not a size like 8 or 2x2x1; {USAGE}") from None
    if not dims or min(dims) < 1:
        raise TargetError(f"target {target!r}: sizes must be positive; {USAGE}")
    return math.prod(dims)


def host_memory() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse(text: str) -> Target:
    """'tpu:v5e:16x16' -> Target; TargetError on anything else."""
    parts = text.strip().lower().split(":")
    if parts[0] == "cpu" and len(parts) == 2:
        n = _count(parts[1], text)
        return Target(text, "cpu", "cpu", parts[1], n, host_memory() / n, 0.0)
    if parts[0] == "tpu" and len(parts) == 3 and parts[1] in TPUS:
        _, memory, peak = TPUS[parts[1]]
        return Target(text, "tpu", parts[1], parts[2], _count(parts[2], text), memory, peak)
    if parts[0] == "gpu" and len(parts) == 3 and parts[1] in GPUS:
        memory, peak, _ = GPUS[parts[1]]
        return Target(text, "gpu", parts[1], parts[2], _count(parts[2], text), memory, peak)
    raise TargetError(f"unknown target {text!r}: {USAGE}")


def devices(target: Target) -> list:
    """The target's devices: real CPU devices, or compile-only TPU/GPU devices."""
    import jax
    from jax.experimental import topologies

    if target.platform == "cpu":
        have = jax.devices("cpu")
        if len(have) < target.num_devices:
            raise TargetError(
                f"{target.text} needs {target.num_devices} CPU devices, this process has "
                f"{len(have)}: start it with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{target.num_devices}")
        return have[:target.num_devices]
    if target.platform == "tpu":
        try:
            import libtpu  # noqa: F401  (only to say how to install it)
        except ImportError:
            raise TargetError(f"{target.text}: TPU targets need libtpu (the version jax[tpu] "
                              "pins): `make plan-tpu`") from None
        name = f"{TPUS[target.chip][0]}:{target.topology}"
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    memory, _, description = GPUS[target.chip]
    try:
        topology = topologies.get_topology_desc(
            topology_name="", platform="cuda", topology=f"1x1x{target.num_devices}",
            target_config=GPU_SPEC.format(memory=memory, name=description))
    except (NotImplementedError, RuntimeError) as error:
        raise TargetError(
            f"{target.text}: GPU targets need jax-cuda12-plugin at JAX's version (and "
            f"nvidia-cudnn-cu12) and JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 on a machine without a "
            f"GPU ({error})") from None
    return list(topology.devices)
