"""Running: one runner, the training loop, progress events, sweeps and their executors, and the Python API functions."""
