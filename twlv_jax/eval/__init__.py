"""Evaluation of embeddings: k-NN (the official protocol)."""
