"""The llama.cpp side of ``bench/generate.py --llama_cpp``: llama.cpp (through llama-cpp-python) against our engine
on the same weights, batch 1, at each thread count: f32 against our fp32 and q8_0 against our int8.

Our model is written to GGUF with our own exporter (``tencentpretrain.convert.gguf``), so both sides run identical
weights; llama.cpp generates greedily through ``Llama.generate`` (its sampler, Python loop included), ours through
``Engine.generate`` (fp32 decoding natively with ``--native``, else in PyTorch; int8 always in PyTorch); both keep
the key/value cache in f32. TTFT and decode tokens/s are measured as in
``bench/generate.py`` (fastest of the repeats).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

F32 = 0  # GGML_TYPE_F32: the key/value cache in f32 as ours (llama.cpp's default f16 cache rounds the attention)
HEADER = ("| model | threads | llama.cpp f32 tok/s | ours fp32 tok/s | f32: llama.cpp / ours | llama.cpp q8_0 tok/s | "
          "ours int8 tok/s | 8-bit: llama.cpp / ours | TTFT ms llama.cpp f32 / ours fp32 / llama.cpp q8_0 / ours "
          "int8 | same tokens f32 |")


def synthetic_vocabulary(rows: int):
    """A vocabulary of ``rows`` placeholder pieces (the benchmark feeds token ids, never text)."""
    from tencentpretrain.convert.gguf_vocab import CONTROL, NORMAL, UNKNOWN, Vocabulary

    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, rows)]
    return Vocabulary(tokens, [0.0] * rows, [UNKNOWN, CONTROL, CONTROL] + [NORMAL] * (rows - 3),
                      {"unk": 0, "bos": 1, "eos": 2}, True)


def export(model, folder: Path, outtypes: tuple[str, ...] = ("f32", "q8_0")) -> dict[str, Path]:
    """Our model as GGUF files in ``folder``, one per type of ``outtypes`` (``convert.gguf.OUTTYPES``)."""
    from tencentpretrain.convert.gguf import LazyTensor, write_gguf

    tensors = {name: LazyTensor(tuple(t.shape), lambda t=t: t) for name, t in model.state_dict().items()}
    vocab = synthetic_vocabulary(model.vocab_size)
    paths = {}
    for outtype in outtypes:
        paths[outtype] = folder / f"bench-{outtype}.gguf"
        write_gguf(paths[outtype], model.config, tensors, vocab, outtype)
    return paths


def llama_cpp_runner(path: Path, prompt: list[int], threads: int, context: int, repack: str = "auto", **sampling):
    """A function generating ``n`` tokens with llama.cpp: greedily, or with ``sampling`` (``Llama.generate``'s
    keywords: temp, top_k, top_p, min_p, seed...); ``repack``: as ``--llama_cpp_repack`` (llamacpp.py)."""
    from tencentpretrain.llamacpp import open_llama

    model = open_llama(path, repack, n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=context,
                       type_k=F32, type_v=F32, verbose=False)

    def run(n: int) -> list[list[int]]:
        out = []
        for token in model.generate(prompt, **{"temp": 0.0, **sampling}, reset=True):
            out.append(token)
            if len(out) == n:
                return [out]
        return [out]

    return run


def threaded(run, threads: int):
    """``run`` with torch limited to ``threads`` threads while it runs."""
    def wrapped(n: int):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(n)
        finally:
            torch.set_num_threads(before)

    return wrapped


def llama_cpp_rows(name: str, ours, args, measure, ours_runner, prompts_for) -> list[str]:
    """Table rows for one model size: one per thread count in ``args.llama_cpp_threads``."""
    from tencentpretrain.generation import Engine, prepare_for_inference
    from tencentpretrain.generation.backend import choose_backend

    params = sum(p.numel() for p in ours.parameters()) / 1e6
    prompt = prompts_for(1, ours.vocab_size)[0]
    context = len(prompt) + args.new_tokens + 8
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = export(ours, Path(tmp))
        layout = "row" if args.native else "column"  # what run_llama.py picks for each
        fp32_model = prepare_for_inference(copy.deepcopy(ours), layout=layout, batch_size=1)
        int8 = Engine(prepare_for_inference(copy.deepcopy(ours), int8=True, batch_size=1))
        for threads in args.llama_cpp_threads:
            fp32 = Engine(fp32_model, choose_backend(fp32_model, threads, native=args.native))
            repack = args.llama_cpp_repack
            runners = {"llama.cpp f32": llama_cpp_runner(paths["f32"], prompt, threads, context, repack),
                       "ours fp32": threaded(ours_runner(fp32, [prompt]), threads),
                       "llama.cpp q8_0": llama_cpp_runner(paths["q8_0"], prompt, threads, context, repack),
                       "ours int8": threaded(ours_runner(int8, [prompt]), threads)}
            same = runners["llama.cpp f32"](args.new_tokens) == runners["ours fp32"](args.new_tokens)
            result = measure(runners, 1, args.new_tokens, args.repeats)
            (lf, lf_ttft), (of, of_ttft) = _speed(result["llama.cpp f32"]), _speed(result["ours fp32"])
            (lq, lq_ttft), (oq, oq_ttft) = _speed(result["llama.cpp q8_0"]), _speed(result["ours int8"])
            row = (f"| {name} ({params:.0f}M) | {threads} | {lf:.0f} | {of:.0f} | **{lf / of:.2f}x** | {lq:.0f} | "
                   f"{oq:.0f} | **{lq / oq:.2f}x** | {lf_ttft:.1f} / {of_ttft:.1f} / {lq_ttft:.1f} / {oq_ttft:.1f} | "
                   f"{same} |")
            print(row, flush=True)
            rows.append(row)
    return rows


def quant_header(quant: str) -> str:
    """The header of the ``--quant`` table."""
    return (f"| model | batch | threads | llama.cpp {quant} tok/s | ours {quant} tok/s | ours / llama.cpp | "
            f"ours fp32 tok/s | TTFT ms llama.cpp {quant} / ours {quant} / ours fp32 | "
            "greedy tokens equal to llama.cpp's |")


def llama_cpp_quant_rows(name: str, ours, args, measure, ours_runner, prompts_for) -> list[str]:
    """``--quant q8_0`` (or ``q4_0``) rows for one model size: our native engine in ``args.quant`` against
    llama.cpp's of the same GGUF file (our export: under q4_0 both keep the LM head in q8_0), and our fp32 engine,
    at batch 1 for each of ``args.llama_cpp_threads``, then at each batch of ``args.batches`` above 1
    (llama-cpp-python's ``generate`` decodes one sequence: there llama.cpp's column is its batch-1 speed on the most
    threads, marked as such)."""
    from tencentpretrain.generation import Engine, prepare_for_inference
    from tencentpretrain.generation.backend import choose_backend

    params = sum(p.numel() for p in ours.parameters()) / 1e6
    prompt = prompts_for(1, ours.vocab_size)[0]
    context = len(prompt) + args.new_tokens + 8
    rows, batch_one = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        quant = args.quant
        paths = export(ours, Path(tmp), (quant,))
        models = (prepare_for_inference(copy.deepcopy(ours), layout="row", quant=quant),
                  prepare_for_inference(copy.deepcopy(ours), layout="row"))
        for threads in args.llama_cpp_threads:
            quantized, fp32 = (Engine(model, choose_backend(model, threads)) for model in models)
            notes = quantized.backend.description, fp32.backend.description
            print(f"threads {threads}: {quant} {notes[0]}; fp32 {notes[1]}", flush=True)
            runners = {"llama.cpp": llama_cpp_runner(paths[quant], prompt, threads, context, args.llama_cpp_repack),
                       "ours": ours_runner(quantized, [prompt]), "ours fp32": ours_runner(fp32, [prompt])}
            theirs, mine = runners["llama.cpp"](args.new_tokens)[0], runners["ours"](args.new_tokens)[0]
            agree = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), len(mine))
            result = {k: _speed(v) for k, v in measure(runners, 1, args.new_tokens, args.repeats).items()}
            batch_one[threads] = result["llama.cpp"][0]
            rows.append(_quant_row(name, params, 1, threads, result, f"first {agree} of {len(mine)}"))
        threads = max(args.llama_cpp_threads)
        for batch in [b for b in args.batches if b > 1]:
            quantized, fp32 = (Engine(model, choose_backend(model, threads)) for model in models)
            batch_prompts = prompts_for(batch, ours.vocab_size)
            runners = {"ours": ours_runner(quantized, batch_prompts), "ours fp32": ours_runner(fp32, batch_prompts)}
            result = {k: _speed(v) for k, v in measure(runners, batch, args.new_tokens, args.repeats).items()}
            result["llama.cpp"] = (batch_one[threads], float("nan"))
            rows.append(_quant_row(name, params, batch, threads, result, "llama.cpp: batch 1"))
    return rows


def _quant_row(name, params, batch, threads, result, note) -> str:
    (lq, lq_ttft), (oq, oq_ttft), (of, of_ttft) = (result[k] for k in ("llama.cpp", "ours", "ours fp32"))
    row = (f"| {name} ({params:.0f}M) | {batch} | {threads} | {lq:.0f} | {oq:.0f} | **{oq / lq:.2f}x** | {of:.0f} | "
           f"{lq_ttft:.1f} / {oq_ttft:.1f} / {of_ttft:.1f} | {note} |")
    print(row, flush=True)
    return row


def _speed(result: tuple[float, float]) -> tuple[float, float]:
    """(decode tokens/s, TTFT ms) of a ``measure`` result (TTFT s, tokens/s)."""
    ttft, tps = result
    return tps, ttft * 1e3
