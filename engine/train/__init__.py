"""Training: fit heads on cached features, sweeps, metrics, and fine-tuning orchestration."""
