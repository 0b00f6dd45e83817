"""Training: batching, the loop on Accelerate, evaluation, checkpoints and exact resume."""
