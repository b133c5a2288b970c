"""Training engine: device and environment, optimisation, checkpoints, runs, the loop."""
