"""Reading and writing TencentPretrain checkpoints (``.bin`` state dicts or ``.safetensors``)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tencentpretrain.config import ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.model import VOCAB_HEADS, Model, build_model, tie_weights, vocab_head

WORD_EMBEDDING = "embedding.word.embedding.weight"
LM_HEAD = VOCAB_HEADS["lm"]


class CheckpointError(InputError):
    """A checkpoint that does not fit the model; the message names the file and the tensors."""


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (memory-mapped, weights only).

    Raises:
        CheckpointError: naming the file, when it is missing, a directory, empty, truncated, corrupt, or holds
            something other than a dict of named tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .bin or .safetensors checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; was it copied or written completely?")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path, size)
    _check_tensors(path, state)
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise safetensors_error(path, err) from None


def safetensors_error(path: str | Path, err: Exception) -> CheckpointError:
    """The error for a ``.safetensors`` file that safetensors cannot open."""
    return CheckpointError(f"{path}: truncated or corrupt safetensors file, header unreadable ({err})")


def _read_torch(path: Path, size: int) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError):  # not a zip-format file (legacy torch.save, or damaged): try without mmap
        pass
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        if zipped:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint: the zip archive written by torch.save "
                                  f"is incomplete or damaged ({size} bytes; {_first_sentence(err)})") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (or a corrupt one): {_first_sentence(err)}") from None


def _unpickling_error(path: Path, err: Exception) -> CheckpointError:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if found:
        return CheckpointError(f"{path}: not a state dict of tensors: it holds a Python object ({found.group(1)}) "
                               "that is not loaded for safety (a pickled model or training state?); save "
                               "model.state_dict() instead")
    return CheckpointError(f"{path}: not a PyTorch checkpoint (or a corrupt one): unreadable pickle data")


def _first_sentence(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:200]


def _check_tensors(path: Path, state: object) -> None:
    """Insist on a non-empty dict of name -> tensor, hinting where a wrapped state dict keeps its weights."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found a {type(state).__name__}")
    if not state:
        raise CheckpointError(f"{path}: the state dict holds no tensors")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            hint = f"; are the weights under {name!r}?" if isinstance(value, dict) else ""
            raise CheckpointError(f"{path}: expected a state dict (name -> tensor), but {name!r} holds a "
                                  f"{type(value).__name__}{hint}")


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    problems = []
    config = getattr(model, "config", None)
    tied = config is not None and config.tie_weights
    head = vocab_head(config) if config is not None else LM_HEAD  # the tensor tie_weights shares
    first = _first_names(model)
    for name, shape in expected.items():
        if name not in state:
            if not (name == head and tied) and first.get(name, name) not in state:
                problems.append(f"missing tensor {name} (model expects shape {list(shape)})")
        elif tuple(state[name].shape) != tuple(shape):
            problems.append(f"tensor {name}: checkpoint has shape {list(state[name].shape)}, "
                            f"the model config expects {list(shape)}")
    words = first.get(head, WORD_EMBEDDING)  # what the head is tied to: an encoder-decoder's decoder embedding
    embedding = state.get(words)
    if tied and head in state and embedding is not None and state[head] is not embedding and \
            state[head].shape == embedding.shape and not embedding.is_meta and \
            not torch.equal(state[head], embedding):
        problems.append(f"tensor {head} differs from {words}, but the config ties them "
                        "(tie_weights: true); use an untied config")
    for name, original in first.items():
        a, b = state.get(name), state.get(original)
        if name != head and a is not None and b is not None and a is not b and a.shape == b.shape and \
                not a.is_meta and not b.is_meta and not torch.equal(a, b):
            problems.append(f"tensor {name} differs from {original}, but the model holds one tensor for both")
    problems += [f"unexpected tensor {name} with shape {list(state[name].shape)}"
                 for name in sorted(set(state) - set(expected))]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{source} does not fit the model config:\n  {shown}")


def _first_names(model: torch.nn.Module) -> dict[str, str]:
    """For a tensor the model holds under several names (a module used in two places: an encoder-decoder's shared
    word embedding, T5's per-layer names of one bias table), each later name -> the first; a checkpoint may omit
    the later ones."""
    first: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        first.setdefault(id(tensor), name)
    return {name: first[id(tensor)] for name, tensor in model.state_dict(keep_vars=True).items()
            if first[id(tensor)] != name}


def vocab_size_of(state: dict[str, torch.Tensor], source: str = "checkpoint") -> int:
    """The vocabulary size a state dict was trained with (``source`` names it in the error)."""
    if WORD_EMBEDDING not in state or state[WORD_EMBEDDING].dim() != 2:
        raise CheckpointError(f"{source} has no 2-D {WORD_EMBEDDING}; is it a TencentPretrain checkpoint?")
    return state[WORD_EMBEDDING].shape[0]


def load_model(config_path: str | Path | ModelConfig, model_path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Model:
    """Build the model a config describes and fill it from a checkpoint.

    Args:
        config_path: a JSON config (or an already loaded ``ModelConfig``).
        model_path: a TencentPretrain ``.bin`` or ``.safetensors`` file.
        device: where the model should live.
        dtype: cast floating-point weights to this dtype (default: keep the checkpoint's).

    Returns:
        The model in eval mode; ``model(ids)`` gives logits (B, T, vocab).
    """
    config = config_path if isinstance(config_path, ModelConfig) else ModelConfig.from_json(config_path)
    return model_from_state(config, load_state_dict(model_path), str(model_path), device, dtype)


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], source: str = "checkpoint",
                     device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Model:
    """Build the model on the meta device and adopt the tensors of ``state`` (checked first; nothing is copied
    beyond what ``device``/``dtype`` require). Returns it in eval mode."""
    with torch.device("meta"):
        model = build_model(config, config.vocab_size or vocab_size_of(state, source))
    check_state_dict(model, state, source=source)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_weights:
        tie_weights(model)
    model.reset_buffers()
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the mode a plain open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it into place (``replace_dir``) only if the block
    succeeds, with the mode a plain ``mkdir`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes the directory private
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(source: str | Path, target: str | Path) -> None:
    """Move the finished directory ``source`` to ``target`` (on the same file system), replacing an existing
    ``target`` only now: the old one is first renamed aside, then removed, so ``target`` is never a mixture of
    the two (it is missing only for the instant between two renames)."""
    target = Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict atomically: ``.safetensors`` by suffix, else ``torch.save``."""
    path = Path(path)
    state = {k: v.contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(_untie(state), str(tmp), metadata={"format": "pt"})
        else:
            torch.save(state, tmp)


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: give tied tensors their own copy."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return out
