"""Pure functions of the training step: learning rate, weight decay (and quantization phase-in)."""
