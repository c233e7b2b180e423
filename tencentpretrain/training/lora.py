"""LoRA adapters: ``LoraLinear``, adding them to a model (``apply_lora``), their files and merging them.

``apply_lora`` replaces each ``nn.Linear`` matching a ``target_modules`` pattern (the syntax of ``freezing.py``) by a
``LoraLinear`` that keeps its ``weight`` and ``bias`` under the same names, so base checkpoints still load, and adds
``lora_A`` (rank, in) and ``lora_B`` (out, rank) beside them, the names TencentPretrain's ``LoraLinear`` uses. The
adapter file holds only the trainable tensors; its LoRA settings are written next to it in
``<adapter stem>.lora.json`` so merging needs no extra arguments. A training run's checkpointer
(``checkpointing.py``) merges the adapters into the consolidated checkpoints and writes the adapter files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.checkpoint import atomic_path, load_state_dict, save_state_dict
from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.training.freezing import PatternError, check_patterns, name_matches

LORA_SUFFIXES = (".lora_A", ".lora_B")


class LoraError(PatternError):
    """Bad LoRA settings, a pattern that matches nothing, or an adapter that does not fit its base model."""


@dataclass(frozen=True)
class LoraConfig:
    """The settings of a LoRA run, saved beside the adapter.

    Attributes:
        rank: inner dimension of ``B @ A``.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input while training.
        target_modules: patterns of the linear layers that get an adapter.
        train_modules: patterns of parameters trained in full (e.g. embeddings and LM head).
    """

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("linear_layers.*",)
    train_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "train_modules", tuple(self.train_modules))
        if self.rank < 1:
            raise LoraError(f"LoRA rank must be a positive integer, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise LoraError("LoRA needs at least one target module pattern")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraLinear(nn.Linear):
    """``y = x W^T + b + (alpha / rank) * B(A(dropout(x)))``, taking over an existing ``nn.Linear``'s parameters.

    ``A`` starts kaiming-uniform and ``B`` at zero, so a fresh adapter leaves the layer's output unchanged.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A`` (out, in), computed in at least float32."""
        return merged_delta(self.lora_A, self.lora_B, self.scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def merged_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * (B @ A)``; low-precision factors are multiplied in float32."""
    dtype = torch.promote_types(lora_a.dtype, torch.float32)
    return scale * (lora_b.detach().to(dtype) @ lora_a.detach().to(dtype))


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               target_modules: Sequence[str] = ("linear_layers.*",), train_modules: Sequence[str] = ()) -> LoraConfig:
    """Add LoRA adapters to the linear layers matching ``target_modules`` and freeze the rest of the model.

    Afterwards only ``lora_A``/``lora_B`` and the parameters matching ``train_modules`` require gradients.

    Args:
        model: any module; its ``nn.Linear`` children are replaced in place.
        rank: inner dimension of the adapters.
        alpha: the adapters' output is scaled by ``alpha / rank``.
        dropout: dropout on the adapters' input (training only).
        target_modules: patterns of the linear layers to adapt.
        train_modules: patterns of parameters trained in full, e.g. ``("embedding.*", "target.lm.output_layer")``.

    Returns:
        The settings, for ``save_adapter`` and merging (the model does not keep them).

    Raises:
        LoraError: bad settings, a pattern that matches nothing, or a model that already has adapters.
    """
    config = LoraConfig(rank, alpha, dropout, tuple(target_modules), tuple(train_modules))
    if any(isinstance(m, LoraLinear) for m in model.modules()):
        raise LoraError("the model already has LoRA adapters; merge them first")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    check_patterns(config.target_modules, linears, "LoRA target_modules", LoraError)
    param_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    check_patterns(config.train_modules, param_names, "LoRA train_modules", LoraError)
    for name in linears:
        if any(name_matches(p, name) for p in config.target_modules):
            model.set_submodule(name, LoraLinear(model.get_submodule(name), rank, alpha, dropout), strict=True)
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(is_lora_name(name))
    for name, param in model.named_parameters(remove_duplicate=False):  # second pass: tied weights stay trainable
        if any(name_matches(p, name) for p in config.train_modules):
            param.requires_grad_(True)
    return config


def is_lora_name(name: str) -> bool:
    """Whether ``name`` is a LoRA factor (``...lora_A`` or ``...lora_B``)."""
    return name.endswith(LORA_SUFFIXES)


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapter's tensors: LoRA factors plus every other parameter that is being trained
    (``train_modules``); tied parameters under each of their names, as in ``model.state_dict()``. Also right for a
    ZeRO-3 partitioned model (the names and flags are the full model's)."""
    return [name for name, param in model.named_parameters(remove_duplicate=False)
            if is_lora_name(name) or param.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter: the tensors ``adapter_names`` names."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {name: params[name].detach() for name in adapter_names(model)}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (``W += scale * B @ A``) and turn it back into ``nn.Linear``.

    The base weight keeps its ``requires_grad`` flag (False after ``apply_lora``).
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLinear):
            continue
        with torch.no_grad():
            module.weight.copy_((module.weight.to(torch.float32) + module.delta_weight()).to(module.weight.dtype))
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        model.set_submodule(name, plain, strict=True)


def adapter_config_path(adapter_path: str | Path) -> Path:
    """Where the LoRA settings of ``adapter_path`` live: ``lora.bin`` -> ``lora.lora.json``."""
    adapter_path = Path(adapter_path)
    return adapter_path.with_name(f"{adapter_path.stem}.lora.json")


def save_adapter(model: nn.Module, path: str | Path, config: LoraConfig | None = None) -> dict[str, torch.Tensor]:
    """Write ``lora_state_dict(model)`` to ``path`` (``.bin`` or ``.safetensors``) and its settings beside it.

    Args:
        model: a model with adapters (``apply_lora``).
        path: the adapter file.
        config: the settings ``apply_lora`` returned (default: those the model's adapters show, ``lora_config_of``).

    Returns:
        The saved state.

    Raises:
        LoraError: the model has no adapters (``apply_lora`` was not called).
    """
    state = lora_state_dict(model)
    write_adapter(state, config or lora_config_of(model), path)
    return state


def write_adapter(state: dict[str, torch.Tensor], config: LoraConfig, path: str | Path) -> None:
    """Write an adapter state (``lora_state_dict``'s tensors, possibly gathered from ZeRO-3 partitions) to ``path``
    and its settings to ``adapter_config_path(path)``, each written aside and renamed into place."""
    with atomic_path(adapter_config_path(path)) as tmp:
        tmp.write_text(json.dumps({"format": "tencentpretrain-lora", **dataclasses.asdict(config)}, indent=2) + "\n")
    save_state_dict(state, path)


def lora_config_of(model: nn.Module) -> LoraConfig:
    """The settings a model's adapters show: rank, alpha and dropout of its ``LoraLinear`` layers, the adapted
    layers' names as ``target_modules`` and the other trained parameters' names as ``train_modules``.

    Raises:
        LoraError: the model has no adapters, or adapters of different ranks or alphas.
    """
    adapted = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    if not adapted:
        raise LoraError("the model has no LoRA adapters to save; call apply_lora first")
    settings = {(m.rank, m.alpha, getattr(m.lora_dropout, "p", 0.0)) for m in adapted.values()}
    if len(settings) > 1:
        raise LoraError(f"the model's adapters have different (rank, alpha, dropout): {sorted(settings)}")
    (rank, alpha, dropout), = settings
    trained = tuple(name for name, p in model.named_parameters(remove_duplicate=False)
                    if p.requires_grad and not is_lora_name(name))
    return LoraConfig(rank, alpha, dropout, tuple(adapted), trained)


def read_adapter_config(adapter_path: str | Path) -> LoraConfig:
    """The ``LoraConfig`` saved beside an adapter file.

    Raises:
        LoraError: the settings file is missing or malformed (naming the file and the key).
    """
    path = adapter_config_path(adapter_path)
    if not path.is_file():
        raise LoraError(f"LoRA settings not found: {path} (written by save_adapter next to {adapter_path}); "
                        "pass the rank and alpha explicitly instead")
    data = read_json_object(path, LoraError, what="LoRA settings")
    data.pop("format", None)
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LoraError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    try:
        return LoraConfig(**data)
    except TypeError as err:
        raise LoraError(f"{path}: {err}") from err


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load an adapter file into a model prepared with the same ``apply_lora`` settings.

    Raises:
        LoraError: a tensor of the file is not in the model or has another shape.
    """
    state = load_state_dict(path)
    own = dict(model.named_parameters(remove_duplicate=False))
    problems = [f"unexpected tensor {k}" for k in state if k not in own]
    problems += [f"tensor {k}: file has shape {list(v.shape)}, model has {list(own[k].shape)}"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
    problems += [f"missing tensor {k}" for k in own if is_lora_name(k) and k not in state]
    if problems:
        raise LoraError(f"{path} does not fit the model's adapters:\n  " + "\n  ".join(problems[:20]))
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def merge_lora_state(base_state: dict[str, torch.Tensor], adapter_state: dict[str, torch.Tensor],
                     rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """Merge an adapter into a base state dict, as ``merge_lora`` does for a model.

    Each ``X.lora_A``/``X.lora_B`` pair adds ``alpha / rank * B @ A`` to ``X.weight``; every other adapter tensor
    (a module trained in full) replaces the base's tensor of that name, whose shape may differ (extended vocabulary).

    Returns:
        A new state dict; ``base_state`` is not modified.

    Raises:
        LoraError: an adapter tensor without a base tensor, an unpaired factor, a wrong rank or shape.
    """
    merged = dict(base_state)
    scale = alpha / rank
    for name, tensor in adapter_state.items():
        if is_lora_name(name):
            continue
        if name not in base_state:
            raise LoraError(f"adapter tensor {name} has no counterpart in the base model")
        merged[name] = tensor
    prefixes = sorted({name.rsplit(".", 1)[0] for name in adapter_state if is_lora_name(name)})
    for prefix in prefixes:
        lora_a, lora_b = _lora_pair(adapter_state, prefix, rank)
        weight_name = f"{prefix}.weight"
        weight = merged.get(weight_name)
        if weight is None:
            raise LoraError(f"adapter {prefix}.lora_A has no base tensor {weight_name}")
        if tuple(weight.shape) != (lora_b.shape[0], lora_a.shape[1]):
            raise LoraError(f"{weight_name} has shape {list(weight.shape)} but {prefix}.lora_B @ lora_A is "
                            f"{[lora_b.shape[0], lora_a.shape[1]]}")
        delta = merged_delta(lora_a, lora_b, scale)
        merged[weight_name] = (weight.to(delta.dtype) + delta).to(weight.dtype)
    return merged


def _lora_pair(state: dict[str, torch.Tensor], prefix: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (A, B) factors of ``prefix``, checked for presence, rank and matching inner dimension."""
    missing = [f"{prefix}{s}" for s in LORA_SUFFIXES if f"{prefix}{s}" not in state]
    if missing:
        raise LoraError(f"adapter lacks {missing[0]}, the other half of its pair")
    lora_a, lora_b = state[f"{prefix}.lora_A"], state[f"{prefix}.lora_B"]
    if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != rank or lora_b.shape[1] != rank:
        raise LoraError(f"{prefix}: lora_A {list(lora_a.shape)} and lora_B {list(lora_b.shape)} do not have "
                        f"rank {rank}")
    return lora_a, lora_b
