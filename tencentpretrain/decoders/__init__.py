"""Decoders (``decoder`` key) for encoder-decoder models. None are registered yet: every model in the
zoo is decoder-only (a causal ``transformer`` encoder), and configs say ``"decoder": null``."""
