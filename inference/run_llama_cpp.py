"""Generate with a GGUF file in llama.cpp (through llama-cpp-python), in the file format of inference/run_llama.py.

One prompt per line of ``--test_path`` (literal ``\\n`` reads as a newline), one generated text per line of
``--prediction_path``. When the GGUF has a chat template (exported with ``--template``), each line is a question
answered through it, as ``run_llama.py --template`` does; otherwise (or with ``--raw``) the line is the prompt::

    python inference/run_llama_cpp.py --load_model_path model.gguf --test_path questions.txt \\
        --prediction_path answers.txt --max_new_tokens 64 --temperature 0

Needs ``pip install llama-cpp-python`` (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tencentpretrain.checkpoint import atomic_path
from tencentpretrain.cli import run_cli
from tencentpretrain.errors import InputError
from tencentpretrain.generation.options import add_sampling_args
from tencentpretrain.llamacpp import add_repack_arg, open_llama
from tencentpretrain.prompts import escape, read_prompts


def build_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load_model_path", required=True, help="the .gguf file")
    parser.add_argument("--test_path", required=True, help="prompts (or questions), one per line")
    parser.add_argument("--prediction_path", required=True, help="where to write the texts, one line per prompt")
    parser.add_argument("--raw", action="store_true", help="use each line as the prompt, ignoring a chat template")
    add_sampling_args(parser)  # the same flags and defaults as run_llama.py
    parser.add_argument("--threads", type=int, help="CPU threads (default: llama.cpp's choice)")
    parser.add_argument("--kv_cache_type", choices=("f16", "f32"), default="f16",
                        help="key/value cache type: llama.cpp's default f16, or f32 as our engine keeps it")
    add_repack_arg(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = build_args(argv)
    try:
        import llama_cpp  # noqa: F401  (loaded by open_llama)
    except ImportError:
        raise InputError("llama-cpp-python is not installed: pip install llama-cpp-python") from None
    for flag, path in (("--load_model_path", args.load_model_path), ("--test_path", args.test_path)):
        if not Path(path).is_file():
            raise InputError(f"{flag} {path}: no such file")
    try:
        cache = {"f16": 1, "f32": 0}[args.kv_cache_type]  # GGML_TYPE_F16, GGML_TYPE_F32
        model = open_llama(args.load_model_path, args.llama_cpp_repack, n_ctx=args.seq_length,
                           n_threads=args.threads, seed=args.seed, type_k=cache, type_v=cache, verbose=False)
    except ValueError as err:
        raise InputError(f"--load_model_path {args.load_model_path}: llama.cpp cannot load it ({err})") from None
    chat = "tokenizer.chat_template" in model.metadata and not args.raw
    sampling = dict(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repeat_penalty=args.repetition_penalty, min_p=0.0)
    outputs = []
    for prompt in read_prompts(args.test_path):
        if chat:
            reply = model.create_chat_completion([{"role": "user", "content": prompt}], **sampling)
            outputs.append(reply["choices"][0]["message"]["content"])
        else:
            outputs.append(model.create_completion(prompt, **sampling)["choices"][0]["text"])
    with atomic_path(args.prediction_path) as tmp:
        tmp.write_text("".join(escape(text) + "\n" for text in outputs), encoding="utf-8")
    print(f"wrote {args.prediction_path} ({len(outputs)} {'answers' if chat else 'completions'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
