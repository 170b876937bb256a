"""Training: the trainer and its observers, components, schedule, run state and the cross-validation summary."""
