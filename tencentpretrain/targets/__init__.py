"""Training targets (``target`` key). Importing this package registers them."""

from tencentpretrain.targets.lm import IGNORE_INDEX, LmTarget

__all__ = ["IGNORE_INDEX", "LmTarget"]
