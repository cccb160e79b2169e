"""Running exported ternary models: activation quantizers (activations), packed linear layers (linear),
loading a native export (model), sampling and generation with a KV cache (sampling, generate).

Submodules are imported where used (the exporters import `activations` without the runtime)."""
