"""Pretraining objectives: masking, the reconstruction targets, and their weighted sum."""
