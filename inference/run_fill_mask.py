"""Fill the masks of a BERT-style model (targets mlm): TencentPretrain's cloze test.

One text per line of ``--test_path``, each with one or more mask tokens (``[MASK]``, the tokenizer's own). The output
has one JSON line per input: ``{"text": ..., "masks": [[{"token_id", "token_str", "score"}, ... top k], ...]}``, one
list per mask in order, scores the softmax over the vocabulary (as transformers' ``fill-mask`` pipeline)::

    python inference/run_fill_mask.py --load_model_path models/bert_base.bin \\
        --config_path models/bert/base_config.json --tokenizer_path bert-base-chinese/ \\
        --test_path cloze.txt --prediction_path cloze_out.jsonl --topk 10

A text is read as ``[CLS] text [SEP]`` (one segment) and cut to ``--seq_length`` tokens; a line without a mask gets
an empty list; the output file appears only once complete.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from tencentpretrain.checkpoint import atomic_path, load_model
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.data.bert import missing_mask_tokens
from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_text
from tencentpretrain.tokenizers import open_tokenizer
from tencentpretrain.vocab import check_vocab, vocab_rows


def build_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load_model_path", required=True, help="TencentPretrain .bin or .safetensors")
    parser.add_argument("--config_path", required=True, help="its JSON config (targets must include mlm)")
    parser.add_argument("--spm_model_path", help="SentencePiece model with a mask token")
    parser.add_argument("--tokenizer_path", help="Hugging Face tokenizer.json or directory (a BERT tokenizer)")
    parser.add_argument("--vocab_path", help="BERT WordPiece vocab.txt (TencentPretrain's flag)")
    parser.add_argument("--test_path", required=True, help="texts with mask tokens, one per line")
    parser.add_argument("--prediction_path", required=True, help="JSON lines: the top k tokens at each mask")
    parser.add_argument("--topk", type=int, default=10, help="candidates per mask")
    parser.add_argument("--seq_length", type=int, default=128, help="tokens a text is cut to, [CLS] and [SEP] "
                                                                    "included")
    parser.add_argument("--batch_size", type=int, default=16, help="texts scored together (padded)")
    args = parser.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1 or args.seq_length < 3:
        parser.error("--topk and --batch_size must be >= 1, --seq_length >= 3")
    return args


def encode(tokenizer, text: str, seq_length: int) -> list[int]:
    """``[CLS] text [SEP]``, the text cut to fit ``seq_length``."""
    return [tokenizer.cls_id, *tokenizer.encode(text)[:seq_length - 2], tokenizer.sep_id]


def fill_masks(model, tokenizer, texts: list[str], topk: int, seq_length: int, batch_size: int) -> list[list]:
    """For each text, a list per mask of its top-k ``{"token_id", "token_str", "score"}``."""
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [encode(tokenizer, text, seq_length) for text in texts[start:start + batch_size]]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
        seg = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)], seg[i, :len(row)] = torch.tensor(row), 1
        with torch.no_grad():
            probs = model(ids, seg=seg).float().softmax(-1)  # (B, T, vocab)
        for i, row in enumerate(rows):
            masks = []
            for position in (ids[i, :len(row)] == tokenizer.mask_id).nonzero().flatten().tolist():
                scores, tokens = probs[i, position].topk(min(topk, probs.shape[-1]))
                masks.append([{"token_id": int(t), "token_str": tokenizer.decode([int(t)]), "score": float(s)}
                              for s, t in zip(scores, tokens)])
            out.append(masks)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_args(argv)
    with naming("--config_path", args.config_path):
        config = ModelConfig.from_json(args.config_path)
    if "mlm" not in config.target:
        raise InputError(f"--config_path {args.config_path}: target {list(config.target)} has no mlm head to fill "
                         "masks with (a causal model generates: inference/run_llama.py)")
    tokenizer = open_tokenizer(args.spm_model_path, args.tokenizer_path, vocab_path=args.vocab_path)
    tokenizer_file = str(args.tokenizer_path or args.spm_model_path or args.vocab_path)
    missing = missing_mask_tokens(tokenizer)
    if missing:
        raise InputError(f"{tokenizer_file}: the tokenizer has no {', '.join(missing)} token; fill-mask needs [CLS], "
                         "[SEP] and [MASK]")
    with naming("--load_model_path", args.load_model_path):
        model = load_model(config, args.load_model_path)
    check_vocab(tokenizer.vocab_size, tokenizer_file,
                vocab_rows(dict(model.state_dict(keep_vars=True))), args.load_model_path, config)
    with naming("--test_path", args.test_path):
        texts = read_text(args.test_path, InputError, "a file of texts").splitlines()
    results = fill_masks(model, tokenizer, texts, args.topk, args.seq_length, args.batch_size)
    with atomic_path(args.prediction_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for text, masks in zip(texts, results):
                f.write(json.dumps({"text": text, "masks": masks}, ensure_ascii=False) + "\n")
    print(f"wrote {args.prediction_path} ({len(texts)} texts, {sum(map(len, results))} masks)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
