"""Filling a model's weights, whole or ZeRO-3 partitioned: the pretrained checkpoint (read by rank 0 only, checked
against the config and tokenizer) or TencentPretrain's initialisation.

Under ZeRO-3 a parameter is scattered straight into the ranks' partitions: no rank ever holds a gathered parameter
while loading. An ordinary (whole) parameter is filled on rank 0 only: DDP and DeepSpeed broadcast rank 0's weights
when the engine is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from tencentpretrain.checkpoint import CheckpointError, check_state_dict, load_state_dict
from tencentpretrain.cli import naming
from tencentpretrain.config import ModelConfig
from tencentpretrain.model import build_model
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.vocab import check_vocab, vocab_rows


def pretrained_state(path: str, config: ModelConfig, vocab_size: int, info: DistInfo,
                     tokenizer: tuple[int, str] | None = None) -> dict[str, torch.Tensor] | None:
    """Rank 0 memory-maps ``path`` (``--pretrained_model_path``) and checks it against the config and
    ``tokenizer`` (size, name); other ranks get None.

    Raises:
        CheckpointError: on every rank (rank 0's message) when the checkpoint does not fit.
    """
    state, error = None, None
    if info.is_main:
        try:
            with naming("--pretrained_model_path", path):
                state = load_state_dict(path)  # memory-mapped: pages are read when copied
                if tokenizer is not None:  # (size, name) from inputs.tokenizer_of
                    check_vocab(*tokenizer, vocab_rows(state), path, config)
                with torch.device("meta"):
                    check_state_dict(build_model(config, vocab_size), state, source=path)
        except CheckpointError as err:
            error = str(err)
    if info.world_size > 1 and dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise CheckpointError(error)
    return state


def gathered(params: list[nn.Parameter], modifier_rank: int | None) -> contextlib.AbstractContextManager:
    """Full values of ZeRO-3 partitioned ``params`` inside the block (a no-op for ordinary ones)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def unique_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Each parameter once (tied ones under their first name)."""
    yield from model.named_parameters()


def load_partitioned(model: nn.Module, state: dict[str, torch.Tensor] | None, dist_info: DistInfo) -> None:
    """Copy a full state dict into a (possibly ZeRO-3 partitioned) model, one parameter at a time.

    Only rank 0 reads ``state`` (memory-mapped; the other ranks may pass None). A ZeRO-3 parameter is scattered
    straight into the ranks' partitions: no rank, rank 0 included, ever holds the gathered parameter, and a rank
    other than 0 receives only its own slice. Layouts the scatter does not cover (NVMe offload, quantised or
    secondary partitions, partition groups smaller than the world) fall back to gather, fill on rank 0,
    re-partition. Ordinary parameters are filled on rank 0 only: DDP and DeepSpeed broadcast rank 0's weights.
    """
    for name, param in unique_parameters(model):
        full = state[name] if dist_info.is_main else None
        if _scatterable(param):
            _scatter_into_partition(param, full)
            continue
        with gathered([param], modifier_rank=0), torch.no_grad():
            if dist_info.is_main:
                param.copy_(full.to(param.dtype))


def init_partitioned(model: nn.Module, std: float = 0.02) -> None:
    """TencentPretrain's initialisation, N(0, std) for matrices (vectors keep their defaults), rank 0's draw.

    A ZeRO-3 parameter is drawn whole on rank 0 (the same numbers as one process with the same seed) and
    scattered into the partitions, as in ``load_partitioned``.
    """
    for _, param in unique_parameters(model):
        shape = param.ds_shape if hasattr(param, "ds_shape") else param.shape
        if len(shape) < 2:
            continue
        if _scatterable(param):
            full = None
            if _partition_rank(param) == 0:
                full = torch.empty(shape, dtype=param.ds_tensor.dtype, device=param.ds_tensor.device)
                full.normal_(0.0, std)
            _scatter_into_partition(param, full)
            continue
        with gathered([param], modifier_rank=0), torch.no_grad():
            param.normal_(0.0, std)


def _scatterable(param: nn.Parameter) -> bool:
    """A ZeRO-3 parameter whose partition is a plain in-memory tensor over the whole world."""
    if not hasattr(param, "ds_id"):
        return False
    from deepspeed import comm
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    part = param.ds_tensor
    return (param.ds_status == ZeroParamStatus.NOT_AVAILABLE and part is not None and part.final_location is None
            and getattr(param, "ds_secondary_tensor", None) is None and not hasattr(part, "ds_quant_scale")
            and comm.get_world_size(group=param.ds_process_group) == comm.get_world_size())


def _partition_rank(param: nn.Parameter) -> int:
    from deepspeed import comm

    return comm.get_rank(group=param.ds_process_group)


@torch.no_grad()
def _scatter_into_partition(param: nn.Parameter, full: torch.Tensor | None) -> None:
    """Rank 0 of the partition group sends each rank its slice of ``full`` (None elsewhere) into ``ds_tensor``.

    DeepSpeed's layout: the flattened parameter, zero-padded to ``world * part`` elements, rank r holding
    ``[r * part, (r + 1) * part)``. Rank 0 sends views of ``full`` (copies only for a padded last slice, or when
    the dtype or device differs: at most one parameter); the others receive only their ``part`` elements.
    """
    from deepspeed import comm

    group, part = param.ds_process_group, param.ds_tensor
    size, chunks = part.numel(), None
    if full is not None:
        if full.numel() != param.ds_numel:
            raise ValueError(f"parameter {param.ds_shape}: got a tensor of {full.numel()} elements")
        flat = full.detach().reshape(-1).to(device=part.device, dtype=part.dtype)
        chunks = list(flat.split(size))
        chunks += [flat.new_zeros(size) for _ in range(comm.get_world_size(group=group) - len(chunks))]
        chunks = [c if c.numel() == size else torch.cat([c, c.new_zeros(size - c.numel())]) for c in chunks]
    comm.scatter(part, chunks, src=comm.get_global_rank(group, 0), group=group)
