"""The one check that a tokenizer, a checkpoint and a config agree on the vocabulary.

Every command that puts a tokenizer and model weights together calls :func:`check_vocab`: ``preprocess.py`` (with
``--pretrained_model_path``/``--config_path``), ``pretrain.py``, ``inference/run_llama.py`` and
``inference/server.py`` (through ``generation/options.py: load_engine``) and the conversions
(``convert/cli.py``). The rules:

- the word embedding and the (untied) LM head have the same number of rows;
- a config's ``vocab_size``, when it gives one, equals those rows;
- the rows equal the tokenizer's number of pieces, or exceed it only when the config sets
  ``"allow_padded_vocab": true`` (a model padded on purpose, e.g. to a multiple of 64).

A mismatch raises :class:`VocabError` naming each size and the file it comes from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.config import ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.model import VOCAB_TENSORS


class VocabError(CheckpointError, InputError):
    """Tokenizer, checkpoint and config disagree on the vocabulary; the message names each size and file."""


def vocab_rows(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Rows of the word embedding and of the vocabulary head (lm's or mlm's, when the state holds one; an
    encoder-decoder's decoder embedding too), by name."""
    return {name: int(state[name].shape[0]) for name in VOCAB_TENSORS if name in state}


def checkpoint_vocab_rows(path: str | Path) -> dict[str, int]:
    """:func:`vocab_rows` of a ``.bin``/``.safetensors`` file, reading only the tensors' shapes where it can."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {name: int(f.get_slice(name).get_shape()[0]) for name in VOCAB_TENSORS if name in f.keys()}
    from tencentpretrain.checkpoint import load_state_dict

    return vocab_rows(load_state_dict(path))  # memory-mapped: nothing but the header is read


def check_vocab(tokenizer_size: int, tokenizer_path: str | Path, rows: dict[str, int], model_path: str | Path,
                config: ModelConfig | None = None) -> None:
    """Refuse a tokenizer, checkpoint and config that disagree on the vocabulary (rules: module docstring).

    Args:
        tokenizer_size: pieces of the tokenizer.
        tokenizer_path: its file (or a description such as "the tokenizer recorded in dataset D"), for messages.
        rows: rows of the embedding and head by tensor name (:func:`vocab_rows`); empty to check only the config.
        model_path: the checkpoint (or directory, or config) the rows come from, for messages.
        config: the model config; its ``vocab_size`` and ``allow_padded_vocab`` are checked and obeyed.

    Raises:
        VocabError: naming each size and the file it comes from.
    """
    sizes = {f"{name} has {n} rows": n for name, n in rows.items()}
    if config is not None and config.vocab_size is not None:
        sizes[f"vocab_size is {config.vocab_size} in config {config.source or '(given)'}"] = config.vocab_size
    problems = []
    if len(set(sizes.values())) > 1:
        problems.append(" but ".join(sizes))
    padded_ok = config is not None and config.allow_padded_vocab
    for label, n in sizes.items():
        if n < tokenizer_size:
            problems.append(f"tokenizer {tokenizer_path} has {tokenizer_size} pieces but {label} (grow the "
                            "checkpoint with scripts/extend_vocab.py)")
        elif n > tokenizer_size and not padded_ok:
            problems.append(f"tokenizer {tokenizer_path} has {tokenizer_size} pieces but {label} (if the model is "
                            'padded on purpose, set "allow_padded_vocab": true in its config; conversions to '
                            "TencentPretrain take --allow_padded_vocab)")
    if problems:
        raise VocabError(f"vocabulary mismatch between {tokenizer_path} and {model_path}:\n  " + "\n  ".join(
            problems))
