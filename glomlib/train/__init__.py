"""Training layer: augmentation, SimCLR pretraining, fine-tuning with slide-grouped cross-validation."""
