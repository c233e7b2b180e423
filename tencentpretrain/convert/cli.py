"""The command lines of ``scripts/convert_*.py``: thin wrappers over the key maps."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from tencentpretrain.checkpoint import check_state_dict, load_state_dict, save_state_dict, vocab_size_of
from tencentpretrain.cli import naming
from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.data.chat_template import chat_template_path, load_template
from tencentpretrain.dtypes import DTYPES
from tencentpretrain.errors import InputError
from tencentpretrain.model import build_model
from tencentpretrain.model_zoo import zoo_path
from tencentpretrain.vocab import check_vocab, vocab_rows


def _check(config: ModelConfig, state: dict[str, torch.Tensor], source: str, spm_model_path: str | None = None,
           tokenizer_path: str | None = None, vocab_path: str | None = None) -> None:
    """The state fits the config, and (given a tokenizer) tokenizer, config and state agree on the vocabulary."""
    if spm_model_path or tokenizer_path or vocab_path:
        from tencentpretrain.tokenizers import open_tokenizer

        size = open_tokenizer(spm_model_path, tokenizer_path, vocab_path=vocab_path).vocab_size
        check_vocab(size, str(spm_model_path or tokenizer_path or vocab_path), vocab_rows(state), source, config)
    with torch.device("meta"):  # the checkpoint's vocabulary: an extended one converts with the zoo config
        model = build_model(config, vocab_size_of(state, source))
    check_state_dict(model, state, source)


def to_tencentpretrain(load: Callable[[str], tuple[ModelConfig, dict]], description: str, argv=None) -> int:
    """CLI: read a foreign checkpoint with ``load`` and write a TencentPretrain ``.bin``/``.safetensors``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input_model_path", required=True, help="the checkpoint directory (or a file in it)")
    parser.add_argument("--output_model_path", required=True, help="TencentPretrain .bin or .safetensors to write")
    parser.add_argument("--output_config_path", help="also write the matching TencentPretrain JSON config here")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: keep the checkpoint's)")
    parser.add_argument("--type", help="model size such as 7B; accepted for compatibility, sizes come from the "
                                       "checkpoint's own config")
    parser.add_argument("--spm_model_path", help="the model's SentencePiece tokenizer, checked against the "
                                                 "embedding (default: tokenizer.model in the input directory)")
    parser.add_argument("--tokenizer_path", help="the model's Hugging Face tokenizer.json or directory, checked "
                                                 "against the embedding (default: tokenizer.json in the input "
                                                 "directory when it has no tokenizer.model; a BERT vocab.txt "
                                                 "too)")
    parser.add_argument("--vocab_path", help="the model's BERT WordPiece vocab.txt, checked against the embedding "
                                             "(TencentPretrain's flag, instead of --tokenizer_path)")
    parser.add_argument("--allow_padded_vocab", action="store_true", help="accept more embedding rows than "
                        "tokenizer pieces (recorded in --output_config_path)")
    args = parser.parse_args(argv)
    _to_ours(load, args)
    return 0


def _input_tokenizer(args) -> tuple[str | None, str | None, str | None]:
    """(SentencePiece model, --tokenizer_path, --vocab_path) to check: the flags, else the tokenizer.model,
    tokenizer.json or vocab.txt beside the input checkpoint ((None, None, None) when there is none)."""
    if args.spm_model_path or args.tokenizer_path or args.vocab_path:
        return args.spm_model_path, args.tokenizer_path, args.vocab_path
    from tencentpretrain.tokenizers import tokenizer_in

    folder = Path(args.input_model_path)
    spm, hf = tokenizer_in(folder if folder.is_dir() else folder.parent)
    return (None if spm is None else str(spm)), (None if hf is None else str(hf)), None


def _chat_template_of(input_path: str) -> str | None:
    """The Hugging Face directory's chat template (its chat_template.jinja, or tokenizer_config.json's
    chat_template); None when it has none."""

    folder = Path(input_path)
    folder = folder if folder.is_dir() else folder.parent
    source = folder / "chat_template.jinja"
    if not source.is_file():
        config = folder / "tokenizer_config.json"
        if not config.is_file() or '"chat_template"' not in config.read_text(encoding="utf-8", errors="replace"):
            return None
        source = config
    with naming("--input_model_path", str(source)):
        return load_template(str(source)).source


def _to_ours(load, args) -> None:
    with naming("--input_model_path", args.input_model_path):
        config, state = load(args.input_model_path)
    if args.allow_padded_vocab:
        config = config.replace(allow_padded_vocab=True)
    if args.dtype:
        state = {k: v.to(DTYPES[args.dtype]) for k, v in state.items()}
    _check(config, state, args.input_model_path, *_input_tokenizer(args))
    template = _chat_template_of(args.input_model_path)  # a broken one stops the conversion before any output
    save_state_dict(state, args.output_model_path)
    if args.output_config_path:
        config.save(args.output_config_path)
    if template is not None:  # carried across beside the checkpoint, for --template auto
        from tencentpretrain.checkpoint import atomic_path

        with atomic_path(chat_template_path(args.output_model_path)) as tmp:
            Path(tmp).write_text(template, encoding="utf-8")
        print(f"wrote {chat_template_path(args.output_model_path)} (the model's chat template)")
    print(f"wrote {args.output_model_path} ({len(state)} tensors, {config.layers_num} layers, "
          f"hidden {config.hidden_size}, vocab {state['embedding.word.embedding.weight'].shape[0]})")


def from_tencentpretrain(save: Callable[..., None], description: str, family: str, argv=None, **save_options) -> int:
    """CLI: read a TencentPretrain checkpoint and its config, write a Hugging Face directory with ``save``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input_model_path", required=True, help="TencentPretrain .bin or .safetensors")
    parser.add_argument("--config_path", help=f"its JSON config (default: models/{family}/<type>_config.json)")
    parser.add_argument("--output_model_path", required=True, help="the Hugging Face directory to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: keep the checkpoint's)")
    parser.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument("--type", help="model size such as 7B, to pick a config from models/ without --config_path")
    if "spm_model_path" in save_options:
        parser.add_argument("--spm_model_path", help="SentencePiece model to ship as the HF tokenizer")
        parser.add_argument("--tokenizer_path", help="Hugging Face tokenizer.json or directory to ship (its "
                                                     "tokenizer_config.json and special tokens map with it)")
        parser.add_argument("--template", metavar="NAME|FILE",
                            help="chat template the model was tuned with, written into tokenizer_config.json so "
                                 "apply_chat_template renders it: a name, a Jinja file, a tokenizer_config.json or a "
                                 "Hugging Face directory (needs --spm_model_path or --tokenizer_path)")
    if "vocab_path" in save_options:
        parser.add_argument("--vocab_path", help="the BERT WordPiece vocab.txt (or its directory) to ship as the HF "
                                                 "tokenizer: vocab.txt and a tokenizer_config.json with the casing "
                                                 "and special tokens it was read with")
    args = parser.parse_args(argv)
    _from_ours(save, args, family)
    return 0


def _from_ours(save, args, family: str) -> None:
    config_path = args.config_path
    if config_path is None:
        if args.type is None:
            raise ConfigError("give --config_path (or --type to use a config from models/)")
        config_path = zoo_path(family, f"{args.type.lower()}_config.json")
    with naming("--config_path", config_path):
        config = ModelConfig.from_json(config_path)
    spm, hf = getattr(args, "spm_model_path", None), getattr(args, "tokenizer_path", None)
    vocab = getattr(args, "vocab_path", None)
    with naming("--input_model_path", args.input_model_path):
        state = load_state_dict(args.input_model_path)
    _check(config, state, args.input_model_path, spm, hf, vocab)  # its messages name every file
    extra = {"spm_model_path": spm, "tokenizer_path": hf} if hasattr(args, "spm_model_path") else {}
    if hasattr(args, "vocab_path"):
        extra["vocab_path"] = vocab
    if getattr(args, "template", None):
        if spm is None and hf is None:
            raise InputError("--template is written with the tokenizer: give --spm_model_path or --tokenizer_path")
        from tencentpretrain.data.chat_template import exported_source
        from tencentpretrain.tokenizers.merge import read_model_proto

        prefix = False
        if spm is not None:
            with naming("--spm_model_path", spm):
                prefix = read_model_proto(spm).normalizer_spec.add_dummy_prefix
        extra["chat_template"] = exported_source(args.template, prefix)
    with naming("--spm_model_path", spm), naming("--tokenizer_path", hf), naming("--vocab_path", vocab):
        save(state, config, args.output_model_path, max_shard_size=args.max_shard_size,
             dtype=DTYPES[args.dtype] if args.dtype else None, **extra)
    print(f"wrote {args.output_model_path}")
