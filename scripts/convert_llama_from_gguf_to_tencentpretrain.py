"""Convert a llama.cpp GGUF file (architecture ``llama``) to a TencentPretrain checkpoint and JSON config.

f32 and f16 files convert exactly; quantised tensors (q8_0, q4_0, ...) are dequantised to f32, which keeps their
rounding error. Needs the ``gguf`` package: ``pip install -e .[gguf]``.
"""

import argparse
import sys

from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.dtypes import DTYPES
from tencentpretrain.errors import InputError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_model_path", required=True, help="the .gguf file")
    parser.add_argument("--output_model_path", required=True, help="TencentPretrain .bin or .safetensors to write")
    parser.add_argument("--output_config_path", help="also write the matching TencentPretrain JSON config here")
    parser.add_argument("--output_spm_model_path",
                        help="also write the file's vocabulary as a SentencePiece model (BPE, as llama.cpp uses it)")
    parser.add_argument("--dtype", choices=tuple(DTYPES),
                        help="cast every tensor (default: keep each as stored: f16 matrices of an f16 file, f32 norms)")
    args = parser.parse_args(argv)
    try:
        from tencentpretrain.convert.gguf import read_gguf
    except ImportError:
        raise InputError("the gguf package is not installed: pip install -e .[gguf]") from None
    with naming("--input_model_path", args.input_model_path):
        config, state, lossy = read_gguf(args.input_model_path)
        if args.dtype:
            dtype = DTYPES[args.dtype]
            state = {name: tensor.to(dtype) for name, tensor in state.items()}
        if args.output_spm_model_path:
            write_tokenizer(args.input_model_path, args.output_spm_model_path)
        save_state_dict(state, args.output_model_path)
    if args.output_config_path:
        config.save(args.output_config_path)
    if lossy:
        print(f"note: {len(lossy)} quantised tensors were dequantised to f32", file=sys.stderr)
    print(f"wrote {args.output_model_path} ({len(state)} tensors, {config.layers_num} layers, hidden "
          f"{config.hidden_size}, vocab {state['embedding.word.embedding.weight'].shape[0]})")
    return 0


def write_tokenizer(gguf_path, spm_path) -> None:
    from gguf import GGUFReader

    from tencentpretrain.checkpoint import atomic_path
    from tencentpretrain.convert.gguf_vocab import sentencepiece_from_gguf

    with atomic_path(spm_path) as tmp:
        pieces = sentencepiece_from_gguf(GGUFReader(gguf_path), tmp)
    print(f"wrote {spm_path} ({pieces} pieces)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
