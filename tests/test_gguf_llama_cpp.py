"""Our GGUF files run by llama.cpp itself (through llama-cpp-python): logits, greedy tokens, tokenisation (also of an
extended vocabulary), quantised quality and the chat template, against our own model, tokenizer and chat code.

Every call into llama.cpp runs in a child process (``llama_cpp_side``'s functions through ``isolation.in_child``):
a native crash there fails that test, names the signal, llama-cpp-python's version and the CPU's features, and the
run goes on. Files load with weight repacking off on AMX CPUs, where llama.cpp's AMX path crashes on q8_0/q4_0
(``tencentpretrain/llamacpp.py``). Skipped without ``llama_cpp`` (``pip install llama-cpp-python``, which compiles
llama.cpp: about ten minutes on two cores). Run with ``-s`` to see the quality figures quoted in docs/deployment.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import llama_cpp_side as side
import numpy as np
import pytest
import torch
from conftest import generated_lines
from gguf_support import (
    SHAPES,
    merge_tokenizers,
    random_state,
    shared_data,
    tiny_config,
    to_gguf,
    train_tiny,
    write_checkpoint,
)
from isolation import in_child

pytest.importorskip("gguf")
if importlib.util.find_spec("llama_cpp") is None:  # found, not imported: llama.cpp itself loads in the children
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)

from tencentpretrain import load_model  # noqa: E402
from tencentpretrain.checkpoint import save_state_dict  # noqa: E402
from tencentpretrain.generation import Engine  # noqa: E402
from tencentpretrain.generation.chat import ChatSession, chat_prompt, encode_prompt  # noqa: E402
from tencentpretrain.hardware import cpu  # noqa: E402
from tencentpretrain.tokenizers import SentencePieceTokenizer  # noqa: E402

VOCAB = 416
CTX = side.CTX
ABOUT = ("llama-cpp-python", "gguf")
TEXTS = [
    "the model reads tokens and learns to predict the next one",
    "  two leading spaces, double  spaces and a trailing space ",
    "Line one\nline two\n\n\ttabbed 12345 67.89 x=3*(4+5)",
    "中文 文本 的 训练 数据 和 模型",
    "混合 mixed 文本 with English 和 emoji 🦙🚀 and accents: café naïve",
    "",
]


def llama_cpp(function, *args):
    """``llama_cpp_side.function(*args)`` in a child process (see the module docstring)."""
    return in_child(function, *args, about=ABOUT)


def our_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def prompt_ids(seed: int, length: int = 24) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(4, 400, (length - 1,), generator=g).tolist()


@pytest.fixture(scope="module", params=list(SHAPES))
def random_pair(request, tmp_path_factory, tiny_spm):
    """(our model, the path of its f32 GGUF) of one tiny random shape."""
    folder = tmp_path_factory.mktemp(request.param)
    config = tiny_config(request.param, VOCAB, CTX)
    model_path, config_path = write_checkpoint(folder, config, random_state(config, VOCAB, seed=3))
    gguf_path = to_gguf(model_path, config_path, tiny_spm, folder / "model.gguf", "f32")
    return load_model(config_path, model_path), gguf_path


def test_f32_logits_equal_ours(random_pair):
    ours, path = random_pair
    prompts = [prompt_ids(seed) for seed in range(3)]
    for ids, got in zip(prompts, llama_cpp(side.logits, path, prompts)):
        want = our_logits(ours, ids)
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 1e-3 * scale, (np.abs(got - want).max(), scale)


def test_f32_greedy_tokens_equal_ours(random_pair):
    ours, path = random_pair
    ids = prompt_ids(7, 16)
    assert llama_cpp(side.greedy, path, [ids], 32) == Engine(ours).generate([ids], 32)


# --- tokenisation ------------------------------------------------------------------------------------------------


def vocab_model(tmp_path, spm, name="vocab") -> Path:
    """A GGUF whose vocabulary is ``spm`` (tiny weights: only the tokenizer is used)."""
    rows = SentencePieceTokenizer(spm).vocab_size
    rows += -rows % 32
    config = tiny_config("mha", rows).replace(emb_size=32, hidden_size=32, heads_num=2, feedforward_size=32,
                                              layers_num=1)
    model_path, config_path = write_checkpoint(tmp_path / name, config, random_state(config, rows))
    return to_gguf(model_path, config_path, spm, tmp_path / f"{name}.gguf", "f32")


def assert_same_tokens(path: Path, spm, texts):
    sp = SentencePieceTokenizer(spm).sp
    for text, (tokens, first) in zip(texts, llama_cpp(side.tokenize, path, texts), strict=True):
        assert tokens == sp.encode(text), text
        assert first == sp.bos_id()


def test_tokenisation_equals_sentencepiece(tmp_path, tiny_spm):
    assert_same_tokens(vocab_model(tmp_path, tiny_spm), tiny_spm, TEXTS + generated_lines(50, seed=5))


def test_extended_vocabulary_tokenisation(tmp_path, tiny_spm):
    from tencentpretrain.tokenizers.train import train_sentencepiece

    corpus = tmp_path / "zh.txt"
    lines = ["今天天气很好 我们去公园散步", "机器学习 深度学习 自然语言处理", "中文 模型 的 训练 数据 很多"]
    corpus.write_text("\n".join(lines * 60) + "\n", encoding="utf-8")
    merged = merge_tokenizers(tiny_spm, train_sentencepiece(corpus, tmp_path / "zh", vocab_size=320),
                              tmp_path / "merged.model")
    sp = SentencePieceTokenizer(merged).sp
    assert sp.get_piece_size() > 400 and len(sp.encode("机器学习")) < len(SentencePieceTokenizer(tiny_spm).encode(
        "机器学习"))  # the merge is in use
    assert_same_tokens(vocab_model(tmp_path, merged), merged, TEXTS + lines)


@pytest.mark.slow
@pytest.mark.skipif(shared_data() is None, reason="../shared/data (or $TP_SHARED_DIR) is absent")
def test_llama_and_chinese_llama_tokenisation(tmp_path):
    """The original LLaMA tokenizer, and it merged with a 20k Chinese one as the Chinese LLaMA was."""
    data = shared_data()
    base = data / "tokenizers" / "llama_tokenizer.model"
    merged = merge_tokenizers(base, data / "tokenizers" / "chinese_sp.model", tmp_path / "chinese_llama.model")
    english = (data / "corpora" / "wiki_demo_en.txt").read_text(encoding="utf-8").splitlines()[:40]
    chinese = (data / "corpora" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()[:40]
    assert_same_tokens(vocab_model(tmp_path, base, "llama"), base, TEXTS + english + chinese)
    assert_same_tokens(vocab_model(tmp_path, merged, "chinese"), merged, TEXTS + english + chinese)


# --- quantisation and chat, on a tiny trained model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_spm):
    """A tiny GQA model trained on the test corpus: (folder, config path, model path, our model)."""
    folder = tmp_path_factory.mktemp("trained")
    tokenizer = SentencePieceTokenizer(tiny_spm)
    stream = [t for line in generated_lines(1500, seed=11) for t in encode_prompt(tokenizer, line) + [2]]
    rows = [stream[i:i + 33] for i in range(0, len(stream) - 33, 33)]
    config = tiny_config("gqa", VOCAB, CTX).replace(allow_padded_vocab=True)  # 416 rows for 400 pieces, on purpose
    model = train_tiny(config, rows, VOCAB, steps=250)
    save_state_dict(model.state_dict(), folder / "model.bin")
    config.save(folder / "config.json")
    return folder, folder / "config.json", folder / "model.bin", model


def common_start(a: list[int], b: list[int]) -> int:
    """Length of the common start of two token lists (greedy agreement as docs/deployment.md reports it)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logp = torch.log_softmax(torch.from_numpy(logits[:-1]).double(), -1)
    return math.exp(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item())


@pytest.mark.slow
def test_quantised_quality(trained, tiny_spm):
    folder, config_path, model_path, ours = trained
    tokenizer = SentencePieceTokenizer(tiny_spm)
    held_out = [encode_prompt(tokenizer, line) for line in generated_lines(40, seed=99)]
    text = [t for ids in held_out for t in ids][: CTX - 1]
    prompts = [ids[:4] for ids in held_out[:8]]
    greedy = Engine(ours).generate(prompts, 32)
    want_ppl = perplexity(our_logits(ours, text), text)
    results = {}
    for outtype in ("f32", "q8_0", "q4_0"):
        path = to_gguf(model_path, config_path, tiny_spm, folder / f"{outtype}.gguf", outtype)
        logits, theirs = llama_cpp(side.quality, path, text, prompts, 32)
        ppl = perplexity(logits, text)
        starts = [common_start(got, want) for got, want in zip(theirs, greedy)]
        results[outtype] = (ppl, sum(starts) / (32 * len(prompts)), path.stat().st_size)
    print(f"\nours f32 perplexity {want_ppl:.4f}")
    for outtype, (ppl, agree, size) in results.items():
        print(f"{outtype}: perplexity {ppl:.4f} ({100 * (ppl / want_ppl - 1):+.2f}%), greedy agreement "
              f"{100 * agree:.1f}%, {size / 1024:.0f} KiB")
    assert want_ppl < 60  # trained: far below the 416 of a uniform guess
    assert results["f32"][0] == pytest.approx(want_ppl, rel=1e-4) and results["f32"][1] == 1.0
    # the corpus is random words: next-token distributions are flat, so greedy paths part at near-ties easily
    assert results["q8_0"][0] == pytest.approx(want_ppl, rel=0.01) and results["q8_0"][1] >= 0.7
    assert results["q4_0"][0] == pytest.approx(want_ppl, rel=0.05) and results["q4_0"][1] >= 0.25
    assert results["q4_0"][2] < results["q8_0"][2] < results["f32"][2] / 3


def test_repack_switch_reaches_llama_cpp(trained, tiny_spm):
    """--llama_cpp_repack off and on load a q4_0 file with llama.cpp's extra buffer types off and on (auto: off on
    AMX CPUs, where on would crash); repacking changes the kernels, not the model: the logits stay close."""
    folder, config_path, model_path, _ = trained
    path = to_gguf(model_path, config_path, tiny_spm, folder / "repack-q4_0.gguf", "q4_0")
    off, off_sum = llama_cpp(side.loaded_repacking, path, "off")
    auto, _ = llama_cpp(side.loaded_repacking, path, "auto")
    assert not off and auto == (not cpu().amx)
    if not cpu().amx:  # forcing it on is what crashes an AMX machine
        on, on_sum = llama_cpp(side.loaded_repacking, path, "on")
        assert on and on_sum == pytest.approx(off_sum, rel=1e-2, abs=1e-2)


MESSAGES = [
    {"role": "system", "content": "the model"},
    {"role": "user", "content": "train the model"},
    {"role": "assistant", "content": "data and 模型 训练"},
    {"role": "user", "content": "中文 文本 loss"},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": " model  loss"},
]


def test_chat_template_renders_our_prompt(trained, tiny_spm):
    folder, config_path, model_path, _ = trained
    path = to_gguf(model_path, config_path, tiny_spm, folder / "chat.gguf", "f32", "--template", "alpaca")
    tokenizer = SentencePieceTokenizer(tiny_spm)
    history = [("train the model", "data and 模型 训练"), ("中文 文本 loss", "")]
    want = chat_prompt(tokenizer, "alpaca", history, " model  loss", CTX, system="the model")
    theirs = llama_cpp(side.chat_template, path, MESSAGES)
    assert theirs["tokens"] == want
    assert theirs["prompt_tokens"] == len(want)
    assert "unexpected role" in (theirs["error"] or "no error")


def test_trained_model_answers_as_ours(trained, tiny_spm):
    """Multi-turn chat through create_chat_completion gives our ChatSession's greedy answers (f32 weights)."""
    folder, config_path, model_path, ours = trained
    tokenizer = SentencePieceTokenizer(tiny_spm)
    path = to_gguf(model_path, config_path, tiny_spm, folder / "chat-f32.gguf", "f32", "--template", "alpaca")
    session = ChatSession(Engine(ours, eos_ids=[tokenizer.eos_id]), tokenizer, "alpaca", seq_length=CTX,
                          max_tokens=24)
    conversations, want = [], []
    for question in ("train the model", "中文 模型 数据", "the loss of 数据"):
        messages = [m for q, a in session.history for m in ({"role": "user", "content": q},
                                                             {"role": "assistant", "content": a})]
        conversations.append(messages + [{"role": "user", "content": question}])
        want.append(session.ask(question))
    answers = llama_cpp(side.chat_answers, path, conversations, 24)
    assert answers == want and any(answers)


def test_bench_generate_llama_cpp_side():
    """bench/generate.py --llama_cpp runs, and llama.cpp's f32 greedy tokens equal ours on the benchmark weights."""
    rows = llama_cpp(side.main_of, "bench/generate.py", ["--sizes", "tiny", "--batches", "1", "--new_tokens", "4",
                                                         "--repeats", "1", "--llama_cpp", "--llama_cpp_threads", "1"])
    cells = [row.strip("|").split("|") for row in rows]
    assert len(rows) == 2 and cells[1][1].strip() == "1" and cells[1][-1].strip() == "True"


def test_run_llama_cpp_answers_as_run_llama(trained, tiny_spm, tmp_path):
    """inference/run_llama_cpp.py on the GGUF writes the answers inference/run_llama.py writes (as quickstart.sh)."""
    folder, config_path, model_path, _ = trained
    gguf_path = to_gguf(model_path, config_path, tiny_spm, tmp_path / "chat.gguf", "f32", "--template", "alpaca")
    questions = tmp_path / "questions.txt"
    questions.write_text("train the model\n中文 模型 数据\nthe loss of 数据\\nand 文本\n", encoding="utf-8")
    common = ["--test_path", str(questions), "--max_new_tokens", "24", "--temperature", "0", "--seq_length", "256"]
    side.main_of("inference/run_llama.py", ["--load_model_path", str(model_path), "--config_path", str(config_path),
                                            "--spm_model_path", str(tiny_spm), "--template", "alpaca",
                                            "--prediction_path", str(tmp_path / "ours.txt"), "--quiet", *common])
    assert llama_cpp(side.main_of, "inference/run_llama_cpp.py", [
        "--load_model_path", str(gguf_path), "--threads", "1", "--kv_cache_type", "f32",
        "--prediction_path", str(tmp_path / "theirs.txt"), *common]) == 0
    ours = (tmp_path / "ours.txt").read_text(encoding="utf-8")
    assert ours.count("\n") == 3 and ours.strip()
    assert (tmp_path / "theirs.txt").read_text(encoding="utf-8") == ours
