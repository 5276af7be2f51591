"""The parity report of an export: ours and the exported PyTorch model on the same clips.

Clips are decoded from a manifest (`twlv embed`'s uniform sampling) when one is given,
else random uint8 noise. Both sides get the same normalised float32 input; ours runs in
float32 whatever the checkpoint's compute dtype. The report gives the max absolute
difference of the tokens, the cosine of the pooled embeddings, and pass/fail against a
tolerance on the tokens; loading problems (missing/unexpected keys) fail it too.
"""

from __future__ import annotations

import numpy as np

from twlv_jax.data import clips as clipslib
from twlv_jax.data.manifest import read_manifest_or_folder
from twlv_jax.data.sources import ManifestSource
from twlv_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from twlv_jax.data.video import BadVideo
from twlv_jax.export import student

TOLERANCE = 1e-4   # max |tokens ours - tokens exported|, float32
# transformers classes of the folders compared by kind (their embedding: the mean token)
HF_CLASSES = {"videomae": "VideoMAEModel", "vjepa2": "VJEPA2Model"}


def input_clips(model_cfg, manifest: str | None, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(uint8 clips (B, T, S, S, 3), where they came from)."""
    shape = (model_cfg.frames, model_cfg.image_size, model_cfg.image_size, 3)
    if not manifest:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (count, *shape), dtype=np.uint8), f"{count} random clips"
    source = ManifestSource(read_manifest_or_folder(manifest, "val"))
    clips, names = [], []
    for index in range(len(source)):
        record = source[index]
        try:
            read = clipslib.read_eval_clips(record, frames=model_cfg.frames,
                                            image_size=model_cfg.image_size)
        except BadVideo:
            continue
        clips.append(read.video[0])
        names.append(record["name"])
        if len(clips) == count:
            break
    if not clips:
        raise ValueError(f"{manifest}: no readable video to check parity on")
    return np.stack(clips), f"{len(clips)} clips decoded from {manifest}"


def normalized(video_uint8: np.ndarray) -> np.ndarray:
    """(B, T, H, W, 3) uint8 -> (B, T, 3, H, W) float32 pixel_values, as preprocessing.json says."""
    x = video_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))


def load_exported(kind: str, location: str, fields: dict | None = None):
    """(torch model in eval mode, loading problems) of an export of `kind`."""
    import torch

    if kind in HF_CLASSES:
        import transformers
        model, info = getattr(transformers, HF_CLASSES[kind]).from_pretrained(
            location, output_loading_info=True)
    elif kind == "custom":
        from transformers import AutoModel
        model, info = AutoModel.from_pretrained(location, trust_remote_code=True,
                                                output_loading_info=True)
    else:   # torch | npz: the flat state dict into the same self-contained module
        from twlv_jax.export.files import read_state
        from twlv_jax.export.remote.configuration_twlv import TwlvVideoConfig
        from twlv_jax.export.remote.modeling_twlv import TwlvVideoModel
        model = TwlvVideoModel(TwlvVideoConfig(**fields))
        state = (dict(np.load(location)) if kind == "npz" else read_state(location))
        result = model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                                       strict=False)
        info = {"missing_keys": result.missing_keys, "unexpected_keys": result.unexpected_keys}
    problems = {k: sorted(map(str, v)) for k, v in info.items() if v}
    return model.eval(), problems


def exported_outputs(model, kind: str, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        if kind == "vjepa2":
            out = model(pixel_values_videos=torch.from_numpy(pixel_values), skip_predictor=True)
        else:
            out = model(pixel_values=torch.from_numpy(pixel_values))
    tokens = out.last_hidden_state.numpy()
    pooled = tokens.mean(1) if kind in HF_CLASSES else out.pooler_output.numpy()
    return {"tokens": tokens, "pooled": pooled}


def run(config, params: dict[str, np.ndarray], kind: str, location: str, *,
        manifest: str | None = None, count: int = 2, tolerance: float = TOLERANCE,
        fields: dict | None = None) -> dict:
    """The parity report (a JSON-able dict) of the export of `kind` at `location`."""
    video, where = input_clips(config.model, manifest, count)
    ours = student.forward(config, params, video)
    model, problems = load_exported(kind, location, fields)
    theirs = exported_outputs(model, kind, normalized(video))
    diff = float(np.abs(ours["tokens"] - theirs["tokens"]).max())
    a, b = ours["pooled"].astype(np.float64), theirs["pooled"].astype(np.float64)
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"form": kind, "exported": location, "clips": where,
            "tokens_shape": list(ours["tokens"].shape),
            "max_abs_diff_tokens": diff, "mean_cosine_pooled": float(cosine.mean()),
            "min_cosine_pooled": float(cosine.min()), "tolerance": tolerance,
            "ours": f"twlv-jax in float32 (the run computes in {config.model.dtype})",
            "loading_problems": problems,
            "passed": bool(diff <= tolerance and not problems)}


def summary(report: dict) -> str:
    """One line for the terminal."""
    verdict = "PASS" if report["passed"] else "FAIL"
    text = (f"parity {verdict}: max |tokens diff| {report['max_abs_diff_tokens']:.3g} "
            f"(tolerance {report['tolerance']:g}), mean cosine of pooled "
            f"{report['mean_cosine_pooled']:.9f} on {report['clips']}")
    if report["loading_problems"]:
        text += f"; loading problems: {report['loading_problems']}"
    return text
