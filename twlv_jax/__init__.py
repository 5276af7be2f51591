"""twlv-jax: TWLV-I video foundation model pretraining and evaluation on JAX."""

__version__ = "0.1.0"
