"""The training loop, its policy (Trainer), optimiser, EMA, logging, checkpoints, fine-tuning and evaluation."""
