"""Training: the shared runner and each stage's, their contexts (Ray Train or in-process),
checkpoints, the worker entry point (loop) and the driver (trainer)."""
