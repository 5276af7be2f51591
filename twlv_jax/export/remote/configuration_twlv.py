"""Configuration of the TWLV-I video encoder exported by twlv-jax (`twlv export hf`)."""

from transformers import PreTrainedConfig


class TwlvVideoConfig(PreTrainedConfig):
    """A plain ViT over tubelets; the fields mirror twlv-jax's `model` config block.

    qkv_bias: "all" | "qv" | "none"; pos_embed: "sincos3d" (separable t/h/w) | "sincos1d"
    (VideoMAE's table over the flattened tokens) | "rope3d" (V-JEPA 2's 3-D rotary positions);
    layerscale: LayerScale gammas present.
    """

    model_type = "twlv_video"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_frames: int = 16
    image_size: int = 224
    tubelet_size: int = 2
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: str = "all"
    layerscale: bool = False
    pos_embed: str = "sincos3d"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
