"""Convert a TencentPretrain LLaMA-family checkpoint (or a Hugging Face directory) to a GGUF file for llama.cpp.

The file holds the architecture (llama; qwen2 and qwen3 for Qwen's), the vocabulary (SentencePiece's, or a byte-level
BPE's from --tokenizer_path), the chat template of --template and the weights in
f32, f16, q8_0 or q4_0 (docs/deployment.md). Needs the ``gguf`` package: ``pip install -e .[gguf]``.
"""

import argparse
import sys
from pathlib import Path

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.convert.keymap import ConversionError
from tencentpretrain.errors import InputError
from tencentpretrain.registry import TEMPLATES


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_model_path", required=True,
                        help="TencentPretrain .bin/.safetensors checkpoint, or a Hugging Face LLaMA directory")
    parser.add_argument("--config_path", help="the checkpoint's JSON config (not needed for a directory)")
    parser.add_argument("--spm_model_path", help="SentencePiece model (default: the tokenizer of a directory)")
    parser.add_argument("--tokenizer_path", help="Hugging Face tokenizer.json or directory (Llama-3, Qwen: byte-level "
                                                 "BPE), instead of --spm_model_path")
    parser.add_argument("--output_model_path", required=True, help="the .gguf file to write")
    parser.add_argument("--outtype", choices=("f32", "f16", "q8_0", "q4_0"), default="f16",
                        help="weight type: f32, f16, or 8-/4-bit blocks q8_0 and q4_0 (norms always f32)")
    parser.add_argument("--template", metavar="NAME|FILE",
                        help="the chat template to write (the one the model was tuned with): a name (" +
                        ", ".join(TEMPLATES.names()) + "), a Jinja file, a tokenizer_config.json or a Hugging Face "
                        "directory")
    parser.add_argument("--name", help="general.name of the model (default: the output file name)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError("the gguf package is not installed: pip install -e .[gguf]") from None
    with naming("--input_model_path", args.input_model_path), naming("--config_path", args.config_path), \
            naming("--spm_model_path", args.spm_model_path), naming("--tokenizer_path", args.tokenizer_path):
        convert(args)
    return 0


def convert(args) -> None:
    from tencentpretrain.convert.gguf import read_checkpoint, write_gguf
    from tencentpretrain.convert.gguf_vocab import read_bpe_vocabulary, read_vocabulary
    from tencentpretrain.data.chat_template import exported_source, load_template
    from tencentpretrain.tokenizers import tokenizer_in

    if args.template is not None:  # a bad template file is reported before the weights are read
        load_template(args.template)
    spm, hf = args.spm_model_path, args.tokenizer_path
    if spm and hf:
        raise ConversionError("give one of --spm_model_path and --tokenizer_path, not both")
    if spm is None and hf is None:
        folder = Path(args.input_model_path)
        if not folder.is_dir():
            raise ConversionError("a checkpoint file needs its tokenizer: --spm_model_path or --tokenizer_path")
        spm, hf = tokenizer_in(folder)
        if spm is None and hf is None:
            spm = folder / "tokenizer.model"  # missing: its error names the file
    config, tensors = read_checkpoint(args.input_model_path, args.config_path)
    rows = tensors["embedding.word.embedding.weight"].shape[0]
    vocab = read_vocabulary(spm, rows) if hf is None else read_bpe_vocabulary(hf, rows)
    for warning in vocab.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    template = exported_source(args.template, vocab.add_space_prefix) if args.template else None
    write_gguf(args.output_model_path, config, tensors, vocab, args.outtype, template, args.name)
    size = Path(args.output_model_path).stat().st_size
    print(f"wrote {args.output_model_path} ({args.outtype}, {size / 2**20:.1f} MiB, {config.layers_num} layers, "
          f"{len(vocab.tokens)} tokens" + (f", chat template {args.template})" if template else ")"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
