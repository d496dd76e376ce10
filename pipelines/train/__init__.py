"""Training: the Ray Train driver, the per-worker loop, optimiser and schedule."""
