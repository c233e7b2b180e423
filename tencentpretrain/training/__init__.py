"""Training: options, the loop and its assembly, one engine per backend, the checkpointer, LoRA and freezing.

Importing the package registers the learning-rate schedules (``schedules.py``). Import the submodules directly;
where each decision lives: docs/architecture.md, "Training".
"""

from tencentpretrain.training import schedules  # noqa: F401  (registers the schedules)
