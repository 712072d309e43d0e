"""Training: the per-worker loop (stage1), its contexts, checkpoints, and the driver (trainer)."""
