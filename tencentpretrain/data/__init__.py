"""Data: prompt templates, processors, the binary dataset and its loader. Importing registers them."""

from tencentpretrain.data import templates  # noqa: F401  (registration)
