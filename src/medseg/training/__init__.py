"""Training: the trainer and its observers, components, schedule, run state, DDP and cross-validation."""
