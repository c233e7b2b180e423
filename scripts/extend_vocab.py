"""Grow a checkpoint's word embedding and LM head to a merged tokenizer (scripts/merge_tokenizers.py).

    python scripts/extend_vocab.py --input_model_path models/llama-7b.bin --config_path models/llama/7b_config.json \\
        --base_spm_model_path llama.model --spm_model_path merged/tokenizer.model \\
        --output_model_path models/llama-7b-zh-init.bin --init subword_mean
    python scripts/extend_vocab.py --input_model_path models/llama3-8b.bin --config_path models/llama3/8b_config.json \\
        --base_tokenizer_path Llama-3.1-8B --tokenizer_path merged --output_model_path models/llama3-8b-zh-init.bin

Old rows are kept bit for bit; new rows start as the mean of the base rows of the pieces their text tokenizes into
(subword_mean), the mean of all base rows (mean) or N(0, --init_std) (normal). Reads and writes .bin or
.safetensors; the output appears only once complete. See docs/vocabulary.md.
"""

from __future__ import annotations

import argparse
import sys

from tencentpretrain.checkpoint import atomic_path, load_state_dict, save_state_dict
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.vocab import INITS, extend_state
from tencentpretrain.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_model_path", required=True, help="TencentPretrain .bin or .safetensors")
    parser.add_argument("--config_path", required=True, help="its JSON config")
    parser.add_argument("--base_spm_model_path", help="the tokenizer the checkpoint was trained with")
    parser.add_argument("--spm_model_path", help="the merged tokenizer (extends the base)")
    parser.add_argument("--base_tokenizer_path", help="byte-level BPE: the tokenizer.json (or directory) the "
                        "checkpoint was trained with")
    parser.add_argument("--tokenizer_path", help="byte-level BPE: the merged tokenizer.json (or directory)")
    parser.add_argument("--output_model_path", required=True, help=".bin or .safetensors to write")
    parser.add_argument("--output_config_path", help="also write the config with the new vocab_size here (needed "
                        "when --config_path fixes vocab_size)")
    parser.add_argument("--init", choices=INITS, default="subword_mean", help="how the new rows start")
    parser.add_argument("--init_std", type=float, default=0.02, help="standard deviation of --init normal")
    parser.add_argument("--seed", type=int, default=7, help="seed of --init normal")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with naming("--config_path", args.config_path):
        config = ModelConfig.from_json(args.config_path)
    with naming("--input_model_path", args.input_model_path):
        state = load_state_dict(args.input_model_path)
    bpe = args.base_tokenizer_path is not None or args.tokenizer_path is not None
    base, merged = (args.base_tokenizer_path, args.tokenizer_path) if bpe else \
        (args.base_spm_model_path, args.spm_model_path)
    flags = ("--base_tokenizer_path", "--tokenizer_path") if bpe else ("--base_spm_model_path", "--spm_model_path")
    if base is None or merged is None or (bpe and (args.base_spm_model_path or args.spm_model_path)):
        raise InputError("give --base_spm_model_path and --spm_model_path (SentencePiece), or --base_tokenizer_path "
                         "and --tokenizer_path (byte-level BPE)")
    with naming(flags[0], base), naming(flags[1], merged):
        out = extend_state(state, config, base, merged, args.init, args.init_std, args.seed,
                           source=args.input_model_path, bpe=bpe)
    old, new = state["embedding.word.embedding.weight"].shape[0], out["embedding.word.embedding.weight"].shape[0]
    save_state_dict(out, args.output_model_path)
    if args.output_config_path:
        with atomic_path(args.output_config_path) as tmp:
            (config.replace(vocab_size=new) if config.vocab_size is not None else config).save(tmp)
    elif config.vocab_size is not None:
        print(f"note: {args.config_path} fixes vocab_size {config.vocab_size}; the extended model has {new} rows "
              "(use --output_config_path for a matching config)", file=sys.stderr)
    print(f"wrote {args.output_model_path}: {old} -> {new} rows ({new - old} new, init {args.init})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
