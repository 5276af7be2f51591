"""Templates of the Hugging Face remote-code files `twlv export hf` writes next to the weights.

They import only torch, numpy and transformers, so the exported folder stands alone.
"""
