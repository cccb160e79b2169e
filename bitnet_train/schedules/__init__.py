"""Pure functions of the training step: learning rate, weight decay, quantization phase-in and transitions."""
