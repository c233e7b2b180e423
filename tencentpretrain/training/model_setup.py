"""Building the model a run trains: architecture, weights (pretrained or initialised, whole or ZeRO-3 partitioned),
activation checkpointing, LoRA adapters or frozen parameters. The assembly (``build.py``) calls
``build_training_model`` with the engine backend's ``BuildPlan`` (DeepSpeed's ``zero.Init`` under ZeRO-3) and hands
the model to the engine."""

from __future__ import annotations

from dataclasses import dataclass

from tencentpretrain.config import ModelConfig
from tencentpretrain.model import Model, build_model
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.engine import BuildPlan
from tencentpretrain.training.freezing import freeze_parameters
from tencentpretrain.training.inputs import Inputs
from tencentpretrain.training.logging import note
from tencentpretrain.training.lora import LoraConfig, apply_lora
from tencentpretrain.training.memory import MemoryTrace
from tencentpretrain.training.options import TrainOptions
from tencentpretrain.training.weights import init_partitioned, load_partitioned, pretrained_state


@dataclass(frozen=True)
class ModelSetup:
    """How the run's model is built; the options reach the model as these arguments.

    Attributes:
        config: the architecture.
        vocab_size: rows of the embedding and the LM head.
        pretrained_path: the checkpoint to start from (None: TencentPretrain's N(0, 0.02) initialisation; also when
            resuming, whose training state brings the weights).
        tokenizer: (size, name) of the tokenizer the checkpoint is checked against.
        checkpoint_activations: recompute each layer's activations in the backward pass.
        lora: train LoRA adapters with these settings (everything else frozen but ``lora.train_modules``).
        freeze_patterns: without LoRA, freeze the parameters matching these patterns.
    """

    config: ModelConfig
    vocab_size: int
    pretrained_path: str | None = None
    tokenizer: tuple[int, str] | None = None
    checkpoint_activations: bool = False
    lora: LoraConfig | None = None
    freeze_patterns: tuple[str, ...] = ()

    @classmethod
    def of(cls, opts: TrainOptions, inputs: Inputs) -> ModelSetup:
        """The setup ``pretrain.py``'s options and checked inputs describe."""
        resuming = opts.resume or opts.resume_from_checkpoint is not None
        lora = None
        if opts.use_lora:
            lora = LoraConfig(opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.lora_target_modules,
                              opts.lora_train_modules)
        return cls(inputs.config, inputs.vocab_size, None if resuming else opts.pretrained_model_path,
                   inputs.tokenizer, opts.activation_checkpointing, lora, opts.freeze_patterns)


def build_training_model(setup: ModelSetup, info: DistInfo, plan: BuildPlan | None = None,
                         trace: MemoryTrace | None = None) -> Model:
    """The model, built under ``plan.context`` (partitioned as built under ZeRO-3) or whole, filled from the
    pretrained checkpoint or initialised; then LoRA adapters or freezing as the setup says.

    Only rank 0 opens the pretrained checkpoint (memory-mapped); the other ranks receive their slices (ZeRO-3) or
    rank 0's weights when the engine is built (DDP, DeepSpeed's broadcast).

    Args:
        setup: what to build.
        info: this rank.
        plan: how the engine's backend wants the model built (``Engine.plan``; default: whole).
        trace: marks the memory after building and after filling.
    """
    plan = plan or BuildPlan()
    trace = trace or MemoryTrace(info.rank, enabled=False)
    pretrained = setup.pretrained_path is not None
    state = None
    if pretrained:  # None on ranks > 0
        state = pretrained_state(setup.pretrained_path, setup.config, setup.vocab_size, info, setup.tokenizer)
    with plan.heap:
        with plan.context:
            model = build_model(setup.config, setup.vocab_size, checkpoint_activations=setup.checkpoint_activations)
        trace.mark("building the model")
        (load_partitioned(model, state, info) if pretrained else init_partitioned(model))
        del state
    trace.mark("loading the weights" if pretrained else "initialising")
    if setup.lora is not None:
        lora = setup.lora
        with plan.context:
            apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.target_modules, lora.train_modules)
    elif setup.freeze_patterns:
        note(f"froze {len(freeze_parameters(model, setup.freeze_patterns))} parameter tensors")
    return model
