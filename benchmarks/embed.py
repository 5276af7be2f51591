"""Embedding throughput: `twlv embed`'s embedding path against Hugging Face VideoMAEModel.

    .venv/bin/python benchmarks/embed.py [--sizes tiny,S] [--batch 4] [--batches 3]
        [--rounds 2] [--seconds 2]

Both sides start from the same decoded uint8 clips (decoding is measured in data.md) and
end with one float32 embedding per video (uniform sampling: one clip per video):
*ours* runs `embed.embed_groups` (clips packed into fixed batches, normalised and embedded
by the Encoder on every device, pooled embeddings back in NumPy) on a randomly
initialised student; *HF* runs `transformers.VideoMAEModel` (PyTorch, CPU, random init,
same encoder size and clip shape, `torch.inference_mode`) on the same batches, normalising
the same way and mean-pooling `last_hidden_state`. The two are timed in interleaved rounds
after a warm-up batch.

Writes benchmarks/results/embed.md and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "embed.md")
# Our student in VideoMAE's layout (q/v biases, 1-D positions), so both do the same work.
LAYOUT = (("model.qkv_bias", "qv"), ("model.pos_embed", "sincos1d"), ("model.drop_path", "0.0"))


def cores() -> int:
    return len(os.sched_getaffinity(0))


def clips(count: int, frames: int, size: int) -> np.ndarray:
    """Random uint8 clips (count, T, H, W, 3), the same for both sides."""
    return np.random.RandomState(0).randint(0, 256, (count, frames, size, size, 3), np.uint8)


def our_encoder(size: str, precision: str):
    """An Encoder over all local devices for a random `size` student (no checkpoint)."""
    import jax
    from flax import nnx

    from twlv_jax import config as cfglib
    from twlv_jax.eval.encoder import Encoder, abstract_student
    from twlv_jax.objectives.hybrid import student
    from twlv_jax.parallel import sharding
    from twlv_jax.parallel.mesh import make_mesh

    config = cfglib.build(f"configs/pretrain.py:variant={size},objective=videomae",
                          [*LAYOUT, ("model.dtype", precision)])
    config.mesh.rules = "dp"
    mesh = make_mesh((-1, 1, 1))
    graphdef, abstract, specs = abstract_student(config)
    shardings = sharding.param_shardings(abstract, specs, mesh, "dp")
    params = jax.device_put(nnx.to_pure_dict(nnx.state(student(config.model, nnx.Rngs(0)))),
                            shardings)
    return Encoder(graphdef, params, shardings, config, mesh, source=f"random {size}")


class Ours:
    """`twlv embed`'s path on decoded clips: ClipGroups -> embed_groups -> (videos, D)."""

    def __init__(self, size: str, precision: str, batch: int):
        self.encoder, self.batch = our_encoder(size, precision), batch

    def shape(self) -> tuple[int, int]:
        return self.encoder.frames, self.encoder.image_size

    def run(self, video: np.ndarray) -> np.ndarray:
        from twlv_jax.data.evaluation import ClipGroup
        from twlv_jax.eval.embed import embed_groups

        groups = (ClipGroup(i, str(i), video[i:i + 1], np.zeros(1), np.ones(1), 16, 1.0, {},
                            last=True) for i in range(len(video)))
        return np.stack([clips[0] for _, clips in embed_groups(self.encoder, groups, self.batch)])


class HuggingFace:
    """transformers.VideoMAEModel (PyTorch, CPU) of the same size, mean-pooled tokens."""

    def __init__(self, size: str, batch: int):
        import torch
        from transformers import VideoMAEConfig, VideoMAEModel

        from twlv_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from twlv_jax.models.vit import SIZES

        self.torch, self.batch = torch, batch
        torch.manual_seed(0)
        torch.set_num_threads(cores())
        s, tiny = SIZES[size], size == "tiny"
        config = VideoMAEConfig(image_size=32 if tiny else 224, patch_size=8 if tiny else 16,
                                num_frames=8 if tiny else 16, tubelet_size=2, hidden_size=s.dim,
                                num_hidden_layers=s.depth, num_attention_heads=s.heads,
                                intermediate_size=s.mlp_dim, use_mean_pooling=False)
        self.config = config
        self.model = VideoMAEModel(config).eval()
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)

    def shape(self) -> tuple[int, int]:
        return self.config.num_frames, self.config.image_size

    def run(self, video: np.ndarray) -> np.ndarray:
        torch, out = self.torch, []
        with torch.inference_mode():
            for start in range(0, len(video), self.batch):
                x = torch.from_numpy(video[start:start + self.batch]).permute(0, 1, 4, 2, 3)
                x = (x.float() / 255.0 - self.mean) / self.std  # (B, T, 3, H, W)
                tokens = self.model(pixel_values=x).last_hidden_state  # (B, N, D)
                out.append(tokens.mean(1).numpy())
        return np.concatenate(out)


def measure(sides: dict, video: np.ndarray, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Videos per second of each side per round: sides alternate within a round, each
    embedding `video` again until `seconds` have passed (at least once)."""
    for side in sides.values():
        side.run(video[:side.batch])  # compile / warm up
    rates = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            start, done = time.perf_counter(), 0
            while not done or time.perf_counter() - start < seconds:
                side.run(video)
                done += len(video)
            rates[name].append(done / (time.perf_counter() - start))
    return rates


def machine() -> str:
    import jax
    import torch
    import transformers
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line),
                     platform.processor())
    return (f"{model}, {cores()} cores used of {os.cpu_count()}, load average "
            f"{os.getloadavg()[0]:.2f} at start; Python {platform.python_version()}, JAX "
            f"{jax.__version__} ({jax.device_count()} {jax.default_backend()} device(s)), torch "
            f"{torch.__version__} ({cores()} threads), transformers {transformers.__version__}")


def report(rows: list[dict], args, header: str) -> str:
    lines = ["# Embedding throughput: `twlv embed` vs Hugging Face VideoMAEModel", "",
             f"Machine: {header}; load average {os.getloadavg()[0]:.2f} at the end. Other "
             "processes on these cores slow PyTorch's spinning OpenMP threads far more than "
             "XLA's, so on a busy machine the HF column (and the ratio) swings widely between "
             "runs: compare runs taken at a load average below the core count.", "",
             f"Command: `benchmarks/embed.py {' '.join(sys.argv[1:]) or '(defaults)'}`.", "",
             __doc__.split("\n\n")[2].strip().replace("\n", " "), "",
             f"Each side embeds {args.batches} batches of {args.batch} clips, repeated for at "
             f"least {args.seconds:g} s per round, {args.rounds} rounds; videos/s is the median "
             "over rounds (higher is better). HF runs float32 once per size; both of our "
             "precisions are compared with that number.", "",
             "| size | clip | our precision | batch | HF PyTorch videos/s (float32) | ours videos/s "
             "| ours / HF |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['frames']} x {r['image']} px | {r['precision']} | "
                     f"{r['batch']} | {r['hf']:.2f} | {r['ours']:.2f} | "
                     f"{r['ours'] / r['hf']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,S")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="our compute dtypes (HF runs float32)")
    parser.add_argument("--batch", type=int, default=4, help="clips per model call")
    parser.add_argument("--batches", type=int, default=3, help="batches per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="least time per side and round (repeats the batches)")
    args = parser.parse_args()
    header = machine()
    rows = []
    for size in args.sizes.split(","):
        hf = HuggingFace(size, args.batch)
        sides = {"hf": hf, **{p: Ours(size, p, args.batch) for p in args.precisions.split(",")}}
        assert all(side.shape() == hf.shape() for side in sides.values())
        video = clips(args.batch * args.batches, *hf.shape())
        rates = measure(sides, video, args.rounds, args.seconds)
        for precision in args.precisions.split(","):
            rows.append({"size": size, "frames": hf.shape()[0], "image": hf.shape()[1],
                         "precision": precision, "batch": args.batch,
                         "hf": float(np.median(rates["hf"])),
                         "ours": float(np.median(rates[precision]))})
            print(rows[-1], flush=True)
    text = report(rows, args, header)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
