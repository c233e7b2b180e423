"""The run's inputs, read and checked against each other before anything is built: model config, dataset, dev
dataset and tokenizer must belong together; the message of a mismatch names both sides."""

from __future__ import annotations

from dataclasses import dataclass

from tencentpretrain.cli import naming
from tencentpretrain.config import ModelConfig
from tencentpretrain.data import BinaryDataset
from tencentpretrain.errors import InputError
from tencentpretrain.tokenizers import open_tokenizer
from tencentpretrain.training.options import TrainOptions
from tencentpretrain.vocab import check_vocab


class SetupError(InputError):
    """Data, tokenizer, config and checkpoint that do not belong together; the message names what differs."""


@dataclass(frozen=True)
class Inputs:
    """What ``read_inputs`` found.

    Attributes:
        config: the model architecture (``--config_path``, with ``--dropout`` applied).
        dataset: the training data.
        dev_dataset: the dev data, or None.
        tokenizer: (size, name for messages) of the tokenizer (``tokenizer_of``).
        vocab_size: rows of the model's embedding and head.
        seq_length: input positions per sample (``seq_length_of``).
    """

    config: ModelConfig
    dataset: BinaryDataset
    dev_dataset: BinaryDataset | None
    tokenizer: tuple[int, str]
    vocab_size: int
    seq_length: int


def read_inputs(opts: TrainOptions) -> Inputs:
    """Read the config, the datasets and the tokenizer, and check that they agree.

    Raises:
        InputError: a file that cannot be read, or inputs that do not belong together (naming the flags).
    """
    overrides = {"dropout": opts.dropout} if opts.dropout is not None else {}
    with naming("--config_path", opts.config_path):
        config = ModelConfig.from_json(opts.config_path, **overrides)
    with naming("--dataset_path", opts.dataset_path):
        dataset = BinaryDataset(opts.dataset_path)
    with naming("--spm_model_path", opts.spm_model_path), naming("--tokenizer_path", opts.tokenizer_path), \
            naming("--vocab_path", opts.vocab_path):
        tokenizer, fingerprint = tokenizer_of(opts, dataset)
        vocab_size = vocab_size_of(opts, config, dataset, tokenizer, fingerprint)
    with naming("--dev_dataset_path", opts.dev_dataset_path):
        dev = BinaryDataset(opts.dev_dataset_path) if opts.dev_dataset_path else None
    if dev is not None and dev.meta["vocab_size"] != dataset.meta["vocab_size"]:
        raise SetupError(f"dev dataset {opts.dev_dataset_path} was made with a tokenizer of {dev.meta['vocab_size']} "
                         f"pieces, dataset {opts.dataset_path} with {dataset.meta['vocab_size']}")
    return Inputs(config, dataset, dev, tokenizer, vocab_size, seq_length_of(opts, dataset))


def tokenizer_of(opts: TrainOptions, dataset: BinaryDataset) -> tuple[tuple[int, str], str | None]:
    """The tokenizer's (size, name for messages) and its fingerprint: --spm_model_path's, --tokenizer_path's or
    --vocab_path's (read once), else the size the dataset records and no fingerprint."""
    if opts.spm_model_path or opts.tokenizer_path or opts.vocab_path:
        tokenizer = open_tokenizer(opts.spm_model_path, opts.tokenizer_path, vocab_path=opts.vocab_path)
        return (tokenizer.vocab_size, opts.tokenizer_path or opts.spm_model_path or opts.vocab_path), \
            tokenizer.fingerprint
    return (int(dataset.meta["vocab_size"]), f"(the one recorded in dataset {opts.dataset_path})"), None


def check_dataset(dataset: BinaryDataset, opts: TrainOptions, config: ModelConfig,
                  tokenizer: tuple[int, str], fingerprint: str | None = None) -> None:
    """Refuse a dataset made with another tokenizer (``fingerprint``: the given one's), vocabulary, processor or a
    too long sequence length."""
    meta, where = dataset.meta, f"dataset {opts.dataset_path}"
    size, name = tokenizer
    if int(meta["vocab_size"]) != size:
        raise SetupError(f"{where} was made with a tokenizer of {meta['vocab_size']} pieces, tokenizer {name} has "
                         f"{size}")
    if fingerprint is not None and meta.get("tokenizer_fingerprint") != fingerprint:
        raise SetupError(f"{where} was tokenized with another tokenizer: its fingerprint is "
                         f"{meta.get('tokenizer_fingerprint')}, {name} has {fingerprint}")
    processor, source = expected_processor(opts, config)
    if processor and meta.get("data_processor") != processor:
        raise SetupError(f"{where} was made by data processor {meta.get('data_processor')!r}, {source} says "
                         f"{processor!r}")
    if opts.seq_length is not None and opts.seq_length > dataset.seq_length:
        raise SetupError(f"--seq_length {opts.seq_length} > seq_length {dataset.seq_length} of {where}: samples can "
                         "be truncated, not lengthened")
    if seq_length_of(opts, dataset) > config.max_seq_length:
        raise SetupError(f"{where} has seq_length {seq_length_of(opts, dataset)} > max_seq_length "
                         f"{config.max_seq_length} of {opts.config_path} (truncate with --seq_length)")


def expected_processor(opts: TrainOptions, config: ModelConfig) -> tuple[str | None, str]:
    """The data processor the dataset must come from, and who says so: ``--data_processor``, else the config's
    ``data_processor`` (TencentPretrain's rule: a flag on the command line wins over the config file's key)."""
    if opts.data_processor:
        return opts.data_processor, "--data_processor"
    return config.data_processor, f"the \"data_processor\" of {opts.config_path} (override with --data_processor)"


def seq_length_of(opts: TrainOptions, dataset: BinaryDataset) -> int:
    """Input positions per sample: ``--seq_length`` (samples are truncated to it), else the dataset's."""
    return opts.seq_length or dataset.seq_length


def vocab_size_of(opts: TrainOptions, config: ModelConfig, dataset: BinaryDataset,
                  tokenizer: tuple[int, str], fingerprint: str | None = None) -> int:
    """The model's vocabulary: the config's ``vocab_size``, else the tokenizer's (``tokenizer_of``). Tokenizer,
    dataset and config must agree (``vocab.check_vocab``)."""
    check_vocab(*tokenizer, {}, opts.config_path, config)
    check_dataset(dataset, opts, config, tokenizer, fingerprint)
    return config.vocab_size if config.vocab_size is not None else tokenizer[0]
