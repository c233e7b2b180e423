"""The DeepSpeed side of the engine interface: run-time config, ZeRO-3 building and loading, consolidated saving.

The DeepSpeed config file keeps what only DeepSpeed knows (ZeRO stage, offload, loss scaling); the entries that
our flags also set are generated from the flags, so there is one source of truth: micro-batch size, accumulation,
learning rate, gradient clipping, and the schedule (ours, from SCHEDULERS). Without CUDA the config is adapted to
the CPU (no fp16/bf16, no pinned memory, no offload, torch AdamW instead of DeepSpeed's fused/CPU Adam), with a
logged note for each change.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.training.engine import DistInfo, Engine, LossModule, StepResult
from tencentpretrain.training.options import OptionsError, TrainOptions


def deepspeed_config(opts: TrainOptions, on_cuda: bool, note: Callable[[str], None]) -> dict:
    """The DeepSpeed config dict for this run: the file's content with our flags' entries written over it."""
    path = Path(opts.deepspeed_config)
    config = read_json_object(path, OptionsError, missing=f"--deepspeed_config {path} does not exist",
                              what="a DeepSpeed config")
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two below and the world size
    config["train_micro_batch_size_per_gpu"] = opts.batch_size
    config["gradient_accumulation_steps"] = opts.accumulation_steps
    config["gradient_clipping"] = opts.max_grad_norm
    if "scheduler" in config:
        note(f"{path}: ignoring its \"scheduler\"; the schedule is --scheduler {opts.scheduler} with --warmup")
        del config["scheduler"]
    if "optimizer" in config:
        config["optimizer"].setdefault("params", {})["lr"] = opts.learning_rate
    _set_precision(config, opts, on_cuda, note)
    if not on_cuda:
        _adapt_to_cpu(config, path, note)
    if not opts.enable_zero3 and config.get("zero_optimization", {}).get("stage") == 3:
        note(f"{path}: ZeRO stage 3 without --enable_zero3: the model is built whole, then partitioned")
    return config


def _set_precision(config: dict, opts: TrainOptions, on_cuda: bool, note: Callable[[str], None]) -> None:
    if opts.precision != "fp32":  # our flag wins over the file
        config.setdefault("fp16", {})["enabled"] = opts.precision == "fp16"
        config.setdefault("bf16", {})["enabled"] = opts.precision == "bf16"
    if not on_cuda:
        for key in ("fp16", "bf16"):
            if config.get(key, {}).get("enabled"):
                note(f"{key} disabled: no CUDA device, training in fp32")
                config[key]["enabled"] = False


def _adapt_to_cpu(config: dict, path: Path, note: Callable[[str], None]) -> None:
    zero = config.get("zero_optimization", {})
    for key in ("offload_param", "offload_optimizer"):
        if key in zero:
            note(f"{path}: dropping zero_optimization.{key}: the parameters already live in CPU memory")
            del zero[key]
    if "optimizer" in config:
        note(f"{path}: its \"{config['optimizer'].get('type')}\" optimizer needs a compiled op; "
             "using torch.optim.AdamW on the CPU")
        del config["optimizer"]
    config["zero_allow_untested_optimizer"] = True
    config["zero_force_ds_cpu_optimizer"] = False
    if config.get("flops_profiler", {}).get("enabled"):
        note(f"{path}: flops_profiler disabled on the CPU")
        config["flops_profiler"]["enabled"] = False


def partitioned_build(config: dict, enabled: bool) -> contextlib.AbstractContextManager:
    """The context to build the model in: ``deepspeed.zero.Init`` (partitioned as built) when ``enabled``."""
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=config, enabled=enabled)


@contextlib.contextmanager
def steady_heap(during: int = 128 * 1024, after: int = 32 * 2**20) -> Iterator[None]:
    """glibc only: while building and loading a partitioned model, serve every allocation above ``during`` bytes
    with its own mmap, so that each freed full parameter goes straight back to the OS.

    Without it glibc raises its mmap threshold to the size of the first freed block (up to 32 MiB), later full
    parameters come from the heap, and the holes they leave stay resident: ~one extra largest parameter of peak
    RSS per rank. Afterwards the threshold is fixed at ``after`` (the most glibc's own rule would reach; trim
    threshold twice that, as glibc pairs them) and free heap memory is returned with ``malloc_trim``.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, during)
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, after)
        libc.mallopt(m_trim_threshold, 2 * after)
        libc.malloc_trim(0)


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def gathered(params: list[nn.Parameter], modifier_rank: int | None) -> contextlib.AbstractContextManager:
    """Full values of ZeRO-3 partitioned ``params`` inside the block (a no-op for ordinary ones)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def unique_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Each parameter once (tied ones under their first name)."""
    yield from model.named_parameters()


class DeepSpeedEngine(Engine):
    """``deepspeed.initialize`` around the model, with our optimizer (or the config's) and our schedule.

    Args:
        model: built under ``partitioned_build`` (ZeRO-3) or whole.
        optimizer: a torch optimizer, or None to let DeepSpeed build the config's ``optimizer``.
        scheduler_fn: builds the LR scheduler from the optimizer DeepSpeed ends up with.
        config: the dict from ``deepspeed_config``.
        groups: parameter groups (weight decay by rule).
    """

    def __init__(self, model: nn.Module, optimizer, scheduler_fn, config: dict, groups: list[dict],
                 dist_info: DistInfo):
        import deepspeed

        self.model, self.dist = model, dist_info
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=LossModule(model), optimizer=optimizer, model_parameters=groups, config=config,
            lr_scheduler=scheduler_fn)  # DeepSpeed steps the schedule after each optimizer step
        self._boundary, self._poisoned, self._poisoned_window = True, False, False
        for param in model.parameters():
            if param.requires_grad:
                param.register_hook(self._scrub)

    def _scrub(self, grad: torch.Tensor) -> torch.Tensor:
        """Zero the gradients of a micro-batch whose loss was not finite on some rank."""
        return torch.zeros_like(grad) if self._poisoned else grad

    def forward(self, src, tgt, boundary):
        self._boundary = boundary
        return self.ds(src.to(self.ds.device), tgt.to(self.ds.device))

    def backward(self, loss):
        self._poisoned = bool(self.dist.all_reduce_sum([0.0 if math.isfinite(loss.item()) else 1.0])[0])
        self._poisoned_window |= self._poisoned
        self.ds.backward(loss)
        self._poisoned = False
        if not self._boundary:
            self.ds.step()  # DeepSpeed counts micro-steps in step(); it only updates at the boundary

    def step(self) -> StepResult:
        """Step, or skip: a non-finite loss on some rank (its gradients were zeroed: step with lr 0), or a
        non-finite gradient norm (DeepSpeed's ZeRO and fp16/bf16 optimizers then discard the step themselves)."""
        poisoned, self._poisoned_window = self._poisoned_window, False
        if poisoned:  # the gradients are zeros; with lr 0 AdamW leaves the weights as they are
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0
        discarded = self.ds.skipped_steps
        self.ds.step()  # then the schedule sets the next step's lr
        discarded = self.ds.skipped_steps > discarded
        if discarded:  # DeepSpeed does not advance the schedule on a step it discards; the plain engine does
            self.scheduler.step()
        norm = self.ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        skipped = poisoned or discarded or not math.isfinite(norm)
        return StepResult(math.nan if poisoned else norm, skipped,
                          scale_overflow=discarded and not poisoned and self.ds.fp16_enabled())

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def consolidated_state_dict(self, dtype):
        """Gather one parameter at a time; only rank 0 keeps a CPU copy (at ``dtype``)."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        state, cache = {}, {}
        for name, tensor in self.model.state_dict().items():
            param = params.get(name)
            if param is None:  # a persistent buffer: never partitioned
                state[name] = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype)
                continue
            if id(param) not in cache:
                with gathered([param], modifier_rank=None):
                    cache[id(param)] = param.detach().to("cpu", dtype).clone() if self.dist.is_main else None
            state[name] = cache[id(param)]
        return state if self.dist.is_main else None

    def save(self, directory):
        self.ds.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)

    def load(self, directory):
        path, _ = self.ds.load_checkpoint(str(directory.parent), tag=directory.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint in {directory} (was it saved without --deepspeed?)")


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
