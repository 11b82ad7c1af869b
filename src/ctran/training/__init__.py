"""Training and evaluation loops: Label Mask Training, the trainer, and the three inference settings."""
