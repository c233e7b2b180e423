"""Training: the loop's helpers (LoRA and freezing, FLOP counting, ...). Import the submodules directly."""
