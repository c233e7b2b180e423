"""Command-line options shared by inference/run_llama.py and inference/server.py, and the engine they describe."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tencentpretrain.cli import naming
from tencentpretrain.config import ModelConfig
from tencentpretrain.data.chat_template import chat_template_path, load_template
from tencentpretrain.dtypes import TORCH_DTYPES, auto_dtype
from tencentpretrain.errors import InputError
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.engine import Engine
from tencentpretrain.generation.loading import load_generation_model
from tencentpretrain.generation.native import native_unavailable
from tencentpretrain.generation.sampling import SamplingParams
from tencentpretrain.generation.weights.layout import LAYOUTS, weight_layout
from tencentpretrain.generation.weights.prepare import QUANTS, prepare_for_inference
from tencentpretrain.registry import TEMPLATES
from tencentpretrain.tokenizers import SentencePieceTokenizer, open_tokenizer, tokenizer_in
from tencentpretrain.vocab import check_vocab, vocab_rows


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model, tokenizer, device and sampling options (``args.sampling`` is built by ``sampling_from_args``)."""
    add_load_args(parser)
    _add_generation_args(parser)


def add_load_args(parser: argparse.ArgumentParser) -> None:
    """The options ``load_engine`` reads to load a model and its tokenizer: path, config, tokenizer, device, dtype,
    int8, weight layout and threads (evaluation uses these alone; the seed defaults to None, i.e. untouched)."""
    parser.set_defaults(seed=None)
    group = parser.add_argument_group("model")
    group.add_argument("--load_model_path", required=True,
                       help="TencentPretrain .bin/.safetensors checkpoint, or a Hugging Face LLaMA directory")
    group.add_argument("--config_path", help="model JSON config (required for a checkpoint file)")
    group.add_argument("--spm_model_path", help="SentencePiece model (default: the tokenizer of a HF directory)")
    group.add_argument("--tokenizer_path", help="Hugging Face tokenizer.json or directory (Llama-3, Qwen), or a BERT "
                                                "vocab.txt, instead of --spm_model_path")
    group.add_argument("--vocab_path", help="BERT WordPiece vocab.txt (TencentPretrain's flag), instead of "
                                            "--tokenizer_path")
    group.add_argument("--lora_path", help="LoRA adapter merged into the model on loading: a lora.bin written by "
                                           "pretrain.py --use_lora (its .lora.json beside it) or a PEFT adapter "
                                           "directory")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device (default: cuda when available, else cpu)")
    group.add_argument("--dtype", choices=["auto", *sorted(TORCH_DTYPES)], default="auto",
                       help="weight dtype; auto: bfloat16 where it is faster than float32 (GPUs with bf16, CPUs "
                            "with AMX, except where the float32 native kernel decodes), else float32 "
                            "(docs/machines.md)")
    group.add_argument("--quant", choices=QUANTS, default="none",
                       help="quantised linear layers: q8_0 (llama.cpp's blocks of 32 int8 weights with a float16 "
                            "scale, input rows quantised alike, integer dot products in the native kernel; float32 "
                            "CPU models; about 4x less weight memory), q4_0 (llama.cpp's blocks of 32 4-bit weights, "
                            "the LM head in q8_0 as llama.cpp's q4_0 files; about 7x less), int8 (PyTorch, "
                            "weight-only, one scale per output channel, the same as --int8; about 4x less) "
                            "(docs/inference.md)")
    group.add_argument("--int8", action="store_true", help="the same as --quant int8")
    group.add_argument("--weight_layout", choices=("auto",) + LAYOUTS, default="auto",
                       help="how float32 CPU weights are laid out for speed: row (fastest for native decoding), "
                            "column (fastest for one prompt at a time in PyTorch), packed (oneDNN, fastest for "
                            "batches in PyTorch), both (packed plus a dense copy, more memory); auto: row when "
                            "decoding natively (see --threads), else packed when --batch_size > 1, else column "
                            "(docs/inference.md)")
    group.add_argument("--threads", type=int, default=torch.get_num_threads(),
                       help="CPU threads: PyTorch's, and those of native decoding, which the engine uses for "
                            "LLaMA-shaped float32 models on CPU (generation/backend.py; default: %(default)s here)")


def add_sampling_args(group: argparse._ActionsContainer) -> None:
    """The context, length and sampling options of every generating command (ours and run_llama_cpp.py's)."""
    group.add_argument("--seq_length", type=int, default=512, help="context size: prompt plus new tokens")
    group.add_argument("--max_new_tokens", type=int, default=256, help="most tokens generated per prompt")
    group.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 means greedy")
    group.add_argument("--top_k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    group.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling mass (1.0: off)")
    group.add_argument("--repetition_penalty", type=float, default=1.0, help="CTRL repetition penalty (1.0: off)")
    group.add_argument("--seed", type=int, default=42, help="seed of the sampling random generator")


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    add_sampling_args(group)
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when this text is generated (repeatable); eos always stops")
    group.add_argument("--template", default="none", metavar="NAME|FILE",
                       help="chat template the model was tuned with: a name (" + ", ".join(TEMPLATES.names()) +
                       "; none for a base model), a Jinja file, a tokenizer_config.json, a Hugging Face directory, "
                       "or auto: the --tokenizer_path tokenizer's own chat template, else the "
                       "<model>.chat_template.jinja a conversion wrote beside the checkpoint, else alpaca (the "
                       "server's default)")



def load_engine(args: argparse.Namespace, batch_size: int = 1,
                decoding: bool = True) -> tuple[Engine, SentencePieceTokenizer]:
    """The engine and tokenizer the options describe, for generating ``batch_size`` prompts at a time
    (``decoding=False``: for scoring only, as evaluation does, so the native decoding kernel does not count)."""
    auto = getattr(args, "template", None) == "auto"
    if getattr(args, "template", None) is not None and not auto:  # checked (file, line) before the model is read
        args.template = load_template(args.template)
    tokenizer = load_tokenizer(args)
    if auto:
        args.template = own_template(tokenizer, args.load_model_path)
    requested = None if args.dtype == "auto" else TORCH_DTYPES[args.dtype]
    dtype = requested or (torch.float32 if torch.device(args.device).type == "cpu" else auto_dtype(args.device))
    if args.seed is not None:
        torch.manual_seed(args.seed)
    with naming("--load_model_path", args.load_model_path), naming("--config_path", args.config_path):
        model = load_generation_model(args.load_model_path, args.config_path, device=args.device, dtype=dtype,
                                      lora_path=args.lora_path)
    check_model_vocab(model, tokenizer, args)
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    quant = quant_of(args)
    native = native_unavailable(model, quant) is None
    if requested is None and dtype == torch.float32 and quant == "none" and not (decoding and native) \
            and auto_dtype(args.device) == torch.bfloat16:  # an AMX CPU, where PyTorch would run in float32
        model.to(torch.bfloat16)
        dtype, native = torch.bfloat16, False
    layout = weight_layout(args.weight_layout, batch_size, args.device, dtype, native=native)
    prepare_for_inference(model, layout=layout, batch_size=batch_size, quant=quant)
    engine = Engine(model, choose_backend(model, args.threads), eos_ids=tokenizer.end_ids, pad_id=tokenizer.pad_id)
    return engine, tokenizer


def own_template(tokenizer, model_path: str | Path | None = None):
    """``--template auto``: the model's own chat template: a Hugging Face tokenizer's (``chat_template.jinja``
    beside it, or the ``chat_template`` of its tokenizer_config.json, as transformers and llama.cpp use it), else
    the one a conversion from Hugging Face wrote beside the checkpoint (``<model>.chat_template.jinja``), else
    ``alpaca``."""
    folder = getattr(tokenizer, "file", None)
    folder = None if folder is None else folder.parent
    with naming("--tokenizer_path", str(tokenizer.model_path)):
        if folder is not None and (folder / "chat_template.jinja").is_file():
            return load_template(folder / "chat_template.jinja")
        if getattr(tokenizer, "config", {}).get("chat_template"):
            return load_template(folder / "tokenizer_config.json")
    if model_path is not None and Path(model_path).is_file() and chat_template_path(model_path).is_file():
        with naming("--load_model_path", str(model_path)):
            return load_template(chat_template_path(model_path))
    return load_template("alpaca")


def load_tokenizer(args: argparse.Namespace):
    """--spm_model_path's or --tokenizer_path's tokenizer, else the one in a Hugging Face --load_model_path
    directory (its tokenizer.model, else its tokenizer.json)."""
    spm, hf, vocab = args.spm_model_path, getattr(args, "tokenizer_path", None), getattr(args, "vocab_path", None)
    if vocab is not None:
        return open_tokenizer(spm, hf, vocab_path=vocab)
    model_dir = Path(args.load_model_path)
    if spm is None and hf is None and model_dir.is_dir():
        spm, hf = tokenizer_in(model_dir)
        if spm is None and hf is None:
            spm = model_dir / "tokenizer.model"  # missing: its error names the file
    if spm is None and hf is None:
        raise InputError("a checkpoint file needs its tokenizer: --spm_model_path (SentencePiece) or "
                         "--tokenizer_path (Hugging Face tokenizer.json)")
    return open_tokenizer(spm, hf)


def quant_of(args: argparse.Namespace) -> str:
    """The quantisation ``--quant`` and ``--int8`` ask for (one of ``prepare.QUANTS``)."""
    quant = getattr(args, "quant", "none")
    if getattr(args, "int8", False):
        if quant not in ("none", "int8"):
            raise InputError(f"--int8 is --quant int8; it contradicts --quant {quant}")
        return "int8"
    return quant


def check_model_vocab(model, tokenizer: SentencePieceTokenizer, args: argparse.Namespace) -> None:
    """``vocab.check_vocab`` for a loaded model: the embedding/head rows against the tokenizer's pieces (padding
    only where ``--config_path``, else the model's own config, allows it)."""
    config = ModelConfig.from_json(args.config_path) if args.config_path else model.config
    rows = vocab_rows(dict(model.state_dict(keep_vars=True)))
    check_vocab(tokenizer.vocab_size, tokenizer.model_path, rows, args.load_model_path, config)


def sampling_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> SamplingParams:
    """The sampling settings of the options; a bad value is reported through ``parser.error`` (exit code 2)."""
    try:
        return SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    except ValueError as err:
        parser.error(str(err))
