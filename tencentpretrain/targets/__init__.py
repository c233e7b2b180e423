"""Training targets (``target`` key). Importing this package registers them.

Each target names the batch tensor it is scored against (``label``) and returns ``(loss, metrics)`` with ``loss``,
``tokens`` (how many predictions counted) and, for classifying targets, ``correct``.
"""

from tencentpretrain.targets.lm import IGNORE_INDEX, LmTarget
from tencentpretrain.targets.mlm import MlmTarget
from tencentpretrain.targets.sp import SpTarget

__all__ = ["IGNORE_INDEX", "LmTarget", "MlmTarget", "SpTarget"]
