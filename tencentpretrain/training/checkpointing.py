"""Which files a run writes, and writing them so that a kill at any moment leaves the previous ones usable.

For ``--output_model_path models/llama_zh_7b``:

- ``models/llama_zh_7b-<step>``: the consolidated model every ``--save_checkpoint_steps`` (TencentPretrain's name;
  a ``torch.save`` state dict with ``model.state_dict()`` names, like a ``.bin``);
- ``models/llama_zh_7b.bin``: the consolidated model at the end of training (the next stage's
  ``--pretrained_model_path``);
- ``models/llama_zh_7b/<step>/``: the full training state (engine files, plus ``rank<r>.pt`` per rank: step, data
  position, RNG), and ``models/llama_zh_7b/latest`` naming the newest complete one;
- with ``--use_lora``: ``models/llama_zh_7b-lora-<step>.bin`` / ``models/llama_zh_7b-lora.bin`` (the adapter) and
  their ``.lora.json`` settings; with ``--lora_format peft`` (or ``both``) PEFT adapter directories
  ``models/llama_zh_7b-lora-<step>/`` / ``models/llama_zh_7b-lora/`` instead (or as well); the consolidated files
  then hold the merged weights.

``Checkpointer`` writes them (``save``: model, adapter, then the training state staged in ``.tmp-<step>`` and
renamed into place) and reads the training state back (``resume``). For a LoRA run it splits the adapter from the
engine's exported state and merges it into the consolidated model (``lora.merge_lora_state``).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tencentpretrain.checkpoint import CheckpointError, atomic_path, replace_dir, save_state_dict
from tencentpretrain.cli import naming
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.peft import check_peft_exportable, write_peft_adapter
from tencentpretrain.dtypes import DTYPES
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.engine import Engine
from tencentpretrain.training.logging import note
from tencentpretrain.training.lora import LoraConfig, adapter_names, is_lora_name, merge_lora_state, write_adapter
from tencentpretrain.training.model_setup import ModelSetup
from tencentpretrain.training.options import TrainOptions

LATEST = "latest"


def step_model_path(output: str, step: int) -> Path:
    """The consolidated model written at ``step``: ``<output>-<step>``."""
    return Path(f"{output}-{step}")


def final_model_path(output: str) -> Path:
    """The consolidated model written at the end: ``<output>.bin``."""
    return Path(f"{output}.bin")


def adapter_path(output: str, step: int | None = None) -> Path:
    """The LoRA adapter: ``<output>-lora-<step>.bin``, or ``<output>-lora.bin`` at the end."""
    return Path(f"{output}-lora-{step}.bin" if step is not None else f"{output}-lora.bin")


def peft_adapter_path(output: str, step: int | None = None) -> Path:
    """The PEFT adapter directory: ``<output>-lora-<step>/``, or ``<output>-lora/`` at the end."""
    return Path(f"{output}-lora-{step}" if step is not None else f"{output}-lora")


def state_root(output: str) -> Path:
    """The directory of training states: ``<output>/``."""
    return Path(output)


def staging_dir(output: str, step: int) -> Path:
    """Where the state of ``step`` is written before it is renamed to ``<output>/<step>``."""
    return state_root(output) / f".tmp-{step}"


def publish_state(output: str, step: int) -> Path:
    """Rename the staged state of ``step`` into place and point ``latest`` at it (rank 0 only)."""
    root, final = state_root(output), state_root(output) / str(step)
    replace_dir(staging_dir(output, step), final)  # the same step may have been saved before a resume
    with atomic_path(root / LATEST) as tmp:
        tmp.write_text(f"{step}\n")
    return final


def latest_state(directory: str | Path) -> Path:
    """The newest complete training state under ``directory`` (a run's ``<output>/``) or ``directory`` itself.

    Raises:
        CheckpointError: there is none, naming where it looked.
    """
    directory = Path(directory)
    if (directory / "rank0.pt").is_file():
        return directory
    pointer = directory / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"no training state to resume from in {directory}: neither a rank0.pt nor a "
                              f"{LATEST} pointer ({pointer} does not exist)")
    state = directory / pointer.read_text().strip()
    if not (state / "rank0.pt").is_file():
        raise CheckpointError(f"{pointer} names {state}, which has no rank0.pt")
    return state


def publish_model(state: dict[str, torch.Tensor], output: str, step: int, final: bool) -> None:
    """Write the consolidated model as ``<output>-<step>``, and as ``<output>.bin`` when ``final``."""
    step_path = step_model_path(output, step)
    save_state_dict(state, step_path)
    if final:
        link_or_copy(step_path, final_model_path(output))


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s content (a hard link when possible), replacing it atomically."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def rng_state() -> dict:
    """Every random generator the loop draws from (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank_state(directory: Path, rank: int, state: dict) -> None:
    """Write one rank's loop state (step, data position, RNG, counters) into a staged directory."""
    torch.save({**state, "rng": rng_state()}, directory / f"rank{rank}.pt")


def load_rank_state(directory: Path, rank: int) -> dict:
    """Read what ``save_rank_state`` wrote for ``rank`` and restore the RNG from it."""
    path = directory / f"rank{rank}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} missing: was the state saved with another number of processes?")
    state = read_state_file(path, "cpu", weights_only=False)
    set_rng_state(state.pop("rng"))
    return state


def read_state_file(path: Path, device, weights_only: bool = True):
    """``torch.load`` of a training-state file; CheckpointError naming it when it is truncated or corrupt."""
    try:
        return torch.load(path, map_location=device, weights_only=weights_only)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:200]
        raise CheckpointError(f"{path}: truncated or corrupt training state ({detail})") from None


@dataclass(frozen=True)
class Checkpointer:
    """Writes a run's checkpoints and training states under ``output`` (``--output_model_path``) and resumes.

    Attributes:
        output: the output prefix.
        dist: this rank (rank 0 writes the model files; every rank its own state file).
        save_dtype: dtype of the consolidated model files.
        lora_formats: the formats LoRA adapters are written in ("tencentpretrain", "peft").
        config: the model's config (PEFT adapters name the Hugging Face modules, which depend on it).
        lora: the run's LoRA settings, when it trains adapters: the consolidated files then hold the merged
            weights, and the adapter is written apart.
    """

    output: str
    dist: DistInfo
    save_dtype: torch.dtype = torch.float32
    lora_formats: tuple[str, ...] = ("tencentpretrain",)
    config: ModelConfig | None = None
    lora: LoraConfig | None = None

    @classmethod
    def of(cls, opts: TrainOptions, info: DistInfo, setup: ModelSetup) -> Checkpointer:
        """The checkpointer of ``pretrain.py``'s options (``--output_model_path``, ``--save_dtype``,
        ``--lora_format``) for the model ``setup`` describes.

        Raises:
            ConversionError: PEFT adapters asked for a model PEFT's key map does not cover (before training, not at
                the first save).
        """
        formats = ("tencentpretrain", "peft") if opts.lora_format == "both" else (opts.lora_format,)
        if setup.lora is not None and "peft" in formats:
            check_peft_exportable(setup.config)
        return cls(opts.output_model_path, info, DTYPES[opts.save_dtype], formats, setup.config, setup.lora)

    def save(self, engine: Engine, step: int, final: bool, loop_state: dict) -> None:
        """The consolidated model (and LoRA adapter), then the full training state (``engine.save`` plus
        ``loop_state``, per rank), staged and renamed into place. Every rank must call it."""
        info = self.dist
        state = engine.export(self.save_dtype)  # collective under ZeRO-3
        if info.is_main:
            self._publish_model(state, adapter_names(engine.model) if self.lora else [], step, final)
        del state
        stage = staging_dir(self.output, step)
        if info.is_main:
            shutil.rmtree(stage, ignore_errors=True)  # a save killed half-way
            stage.mkdir(parents=True)
        info.barrier()
        engine.save(stage)
        save_rank_state(stage, info.rank, loop_state)
        info.barrier()
        if info.is_main:
            publish_state(self.output, step)
        info.barrier()

    def _publish_model(self, state: dict[str, torch.Tensor], adapter: list[str], step: int, final: bool) -> None:
        """Write the consolidated model; for a LoRA run (``adapter``: its tensors' names) the adapter files first
        and the model with the adapter merged."""
        if self.lora is not None:
            self._publish_adapter({name: state[name] for name in adapter}, [step, None] if final else [step])
            base = {name: tensor for name, tensor in state.items() if not is_lora_name(name)}
            state = merge_lora_state(base, {name: state[name] for name in adapter}, self.lora.rank, self.lora.alpha)
        publish_model(state, self.output, step, final)

    def _publish_adapter(self, adapter: dict[str, torch.Tensor], steps: list[int | None]) -> None:
        for at in steps:
            if "tencentpretrain" in self.lora_formats:
                write_adapter(adapter, self.lora, adapter_path(self.output, at))
            if "peft" in self.lora_formats:
                write_peft_adapter(adapter, self.lora, self.config, peft_adapter_path(self.output, at))

    def resume(self, engine: Engine, directory: str | None = None) -> dict:
        """Load the latest training state under ``output`` (``--resume``) or ``directory``
        (``--resume_from_checkpoint``) into ``engine`` and the RNGs; returns this rank's loop state."""
        flag = "--resume_from_checkpoint" if directory else "--resume"
        where = directory or state_root(self.output)
        with naming(flag, where):
            found = latest_state(where)
            engine.load(found)
            state = load_rank_state(found, self.dist.rank)
        note(f"resumed from {found} at step {state['step']}")
        return state
