"""Training: optimizer, state and sharded step, checkpoints, metrics, and the loop."""
