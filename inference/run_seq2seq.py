"""Generate with an encoder-decoder (T5, BART): each line of ``--test_path`` is a source, each line of
``--prediction_path`` the target generated for it::

    python inference/run_seq2seq.py --load_model_path models/t5_small.bin \\
        --config_path models/t5/small_config.json --spm_model_path spiece.model \\
        --test_path sources.txt --prediction_path targets.txt --seq_length 512 --tgt_seq_length 64

The source is read as its tokens and the tokenizer's end token (T5's and BART's ``</s>``), cut to ``--seq_length``;
it is encoded once, and the decoder starts from ``--decoder_start_token_id`` (default: the tokenizer's pad id, T5's
start token; BART's is its eos, 2) and generates up to ``--tgt_seq_length`` tokens with a KV cache (the
cross-attention keys and values computed once per source), greedily by default or sampled with ``--temperature``,
``--top_k`` and ``--top_p``; a row stops at the end token, which is not written. The output file appears only once
complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tencentpretrain.checkpoint import atomic_path, load_model
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.generation.sampling import SamplingParams, sample
from tencentpretrain.jsonfile import read_text
from tencentpretrain.tokenizers import open_tokenizer
from tencentpretrain.vocab import check_vocab, vocab_rows


def build_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load_model_path", required=True, help="TencentPretrain .bin or .safetensors")
    parser.add_argument("--config_path", required=True, help="its JSON config (an encoder-decoder: decoder set)")
    parser.add_argument("--spm_model_path", help="SentencePiece model (T5's spiece.model)")
    parser.add_argument("--tokenizer_path", help="Hugging Face tokenizer.json or directory (BART's)")
    parser.add_argument("--vocab_path", help="BERT WordPiece vocab.txt (TencentPretrain's flag)")
    parser.add_argument("--test_path", required=True, help="sources, one per line")
    parser.add_argument("--prediction_path", required=True, help="where to write the targets, one per line")
    parser.add_argument("--seq_length", type=int, default=128, help="tokens a source is cut to, its end included")
    parser.add_argument("--tgt_seq_length", type=int, default=128, help="most tokens generated per source")
    parser.add_argument("--batch_size", type=int, default=8, help="sources generated together (padded)")
    parser.add_argument("--decoder_start_token_id", type=int, help="the decoder's first input (default: the "
                                                                   "tokenizer's pad id)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 means greedy")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the sampling random generator")
    args = parser.parse_args(argv)
    if args.seq_length < 2 or args.tgt_seq_length < 1 or args.batch_size < 1:
        parser.error("--seq_length must be >= 2, --tgt_seq_length and --batch_size >= 1")
    try:
        args.sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
    except ValueError as err:
        parser.error(str(err))
    return args


def padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, S) and their seg (1 real, 0 padding)."""
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    seg = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], seg[i, :len(row)] = torch.tensor(row, dtype=torch.long), 1
    return ids, seg


def generate(model, sources: list[list[int]], start_id: int, end_ids: tuple[int, ...], pad_id: int,
             max_length: int, params: SamplingParams = SamplingParams(),
             generator: torch.Generator | None = None) -> list[list[int]]:
    """The target ids generated for each source (ids), without the start and end tokens.

    The sources are encoded once (with every decoder layer's cross-attention keys and values), then the decoder
    takes one token per step through its self-attention cache, for at most ``max_length`` steps.
    """
    src, seg = padded(sources, pad_id)
    out: list[list[int]] = [[] for _ in sources]
    done = torch.zeros(len(sources), dtype=torch.bool)
    ends = torch.tensor(end_ids, dtype=torch.long)
    with torch.inference_mode():
        memory = model.encode_memory(src, seg)
        cache = model.decoder_cache(len(sources), max_length)
        token = torch.full((len(sources), 1), start_id, dtype=torch.long)
        for _ in range(max_length):
            chosen = sample(model.decode(token, memory, cache)[:, -1].float(), params, generator=generator).cpu()
            ended = torch.isin(chosen, ends)
            for i in (~done & ~ended).nonzero().flatten().tolist():
                out[i].append(int(chosen[i]))
            done |= ended
            if bool(done.all()):
                break
            token = chosen.masked_fill(done, pad_id)[:, None].to(src.device)
    return out


def source_ids(tokenizer, text: str, seq_length: int) -> list[int]:
    """The source's tokens cut to ``seq_length - 1``, then the tokenizer's end token (if it has one)."""
    end = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    return tokenizer.encode(text)[:seq_length - len(end)] + end


def load(args: argparse.Namespace):
    """The model and tokenizer of the options, checked against each other."""
    with naming("--config_path", args.config_path):
        config = ModelConfig.from_json(args.config_path)
    if not config.encoder_decoder:
        raise InputError(f"--config_path {args.config_path}: decoder is null: not an encoder-decoder (a causal model "
                         "generates with inference/run_llama.py)")
    if args.spm_model_path is None and args.tokenizer_path is None and args.vocab_path is None:
        raise InputError("give the tokenizer: --spm_model_path, --tokenizer_path or --vocab_path")
    tokenizer = open_tokenizer(args.spm_model_path, args.tokenizer_path, vocab_path=args.vocab_path)
    with naming("--load_model_path", args.load_model_path):
        model = load_model(config, args.load_model_path)
    check_vocab(tokenizer.vocab_size, str(args.tokenizer_path or args.spm_model_path or args.vocab_path),
                vocab_rows(dict(model.state_dict(keep_vars=True))), args.load_model_path, config)
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    args = build_args(argv)
    model, tokenizer = load(args)
    start = args.decoder_start_token_id if args.decoder_start_token_id is not None else tokenizer.pad_id
    if start is None or not 0 <= start < model.vocab_size:
        raise InputError(f"--decoder_start_token_id: {start!r} is not a token of the model's {model.vocab_size} "
                         "(the tokenizer has no pad id to default to)")
    with naming("--test_path", args.test_path):
        texts = read_text(args.test_path, InputError, "a file of sources").splitlines()
    generator = torch.Generator().manual_seed(args.seed)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    targets = []
    for first in range(0, len(texts), args.batch_size):
        rows = [source_ids(tokenizer, text, args.seq_length) for text in texts[first:first + args.batch_size]]
        targets += generate(model, rows, start, tuple(tokenizer.end_ids), pad, args.tgt_seq_length, args.sampling,
                            generator)
    with atomic_path(args.prediction_path) as tmp:
        Path(tmp).write_text("".join(tokenizer.decode(ids).replace("\n", "\\n") + "\n" for ids in targets),
                             encoding="utf-8")
    print(f"wrote {args.prediction_path} ({len(texts)} targets)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
