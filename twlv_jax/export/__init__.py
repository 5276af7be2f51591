"""Weights from and to other frameworks (Hugging Face / PyTorch), by name-mapping tables."""
