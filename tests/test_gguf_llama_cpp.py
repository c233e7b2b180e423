"""Our GGUF files run by llama.cpp itself (through llama-cpp-python): logits, greedy tokens, tokenisation (also of an
extended vocabulary), quantised quality and the chat template, against our own model, tokenizer and chat code.

Skipped without ``llama_cpp`` (``pip install llama-cpp-python``, which compiles llama.cpp: about ten minutes on two
cores). Run with ``-s`` to see the quality figures quoted in docs/deployment.md.
"""

from __future__ import annotations

import math

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

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from tencentpretrain import load_model  # noqa: E402
from tencentpretrain.checkpoint import save_state_dict  # noqa: E402
from tencentpretrain.generation import Engine  # noqa: E402
from tencentpretrain.generation.chat import ChatSession, chat_prompt, encode_prompt  # noqa: E402
from tencentpretrain.tokenizers import SentencePieceTokenizer  # noqa: E402

VOCAB = 416
F32 = 0  # GGML_TYPE_F32
CTX = 512
TEXTS = [
    "the model reads tokens and learns to predict the next one",
    "  two leading spaces, double  spaces and a trailing space ",
    "Line one\nline two\n\n\ttabbed 12345 67.89 x=3*(4+5)",
    "中文 文本 的 训练 数据 和 模型",
    "混合 mixed 文本 with English 和 emoji 🦙🚀 and accents: café naïve",
    "",
]


def llama(path, **options) -> llama_cpp.Llama:
    """llama.cpp on ``path`` with an f32 key/value cache (its default f16 cache is a rounding of its own: on the
    benchmark's 99M model it moves the logits by 2% of their scale, the f32 one by 4e-5, as our fp32 cache does)."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=CTX, n_threads=1, verbose=False, type_k=F32, type_v=F32,
                           **options)


def llama_logits(model: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits (T, vocab) for ``ids`` evaluated from an empty context."""
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)])


def our_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def prompt_ids(seed: int, length: int = 24) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(4, 400, (length - 1,), generator=g).tolist()


@pytest.fixture(scope="module", params=list(SHAPES))
def random_pair(request, tmp_path_factory, tiny_spm):
    """(our model, llama.cpp's model) of one tiny random shape, through an f32 GGUF of our checkpoint."""
    folder = tmp_path_factory.mktemp(request.param)
    config = tiny_config(request.param, VOCAB, CTX)
    model_path, config_path = write_checkpoint(folder, config, random_state(config, VOCAB, seed=3))
    gguf_path = to_gguf(model_path, config_path, tiny_spm, folder / "model.gguf", "f32")
    return load_model(config_path, model_path), llama(gguf_path, logits_all=True)


def test_f32_logits_equal_ours(random_pair):
    ours, theirs = random_pair
    for seed in range(3):
        ids = prompt_ids(seed)
        want, got = our_logits(ours, ids), llama_logits(theirs, ids)
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 1e-3 * scale, (np.abs(got - want).max(), scale)


def test_f32_greedy_tokens_equal_ours(random_pair):
    ours, theirs = random_pair
    ids = prompt_ids(7, 16)
    (want,) = Engine(ours).generate([ids], 32)
    theirs.reset()
    got = [token for token, _ in zip(theirs.generate(ids, temp=0.0, reset=True), range(32))]
    assert got == want


# --- tokenisation ------------------------------------------------------------------------------------------------


def vocab_model(tmp_path, spm, name="vocab"):
    """A GGUF whose vocabulary is ``spm`` (tiny weights: only the tokenizer is used)."""
    rows = SentencePieceTokenizer(spm).vocab_size
    rows += -rows % 32
    config = tiny_config("mha", rows).replace(emb_size=32, hidden_size=32, heads_num=2, feedforward_size=32,
                                              layers_num=1)
    model_path, config_path = write_checkpoint(tmp_path / name, config, random_state(config, rows))
    return llama(to_gguf(model_path, config_path, spm, tmp_path / f"{name}.gguf", "f32"), vocab_only=True)


def assert_same_tokens(model: llama_cpp.Llama, spm, texts):
    sp = SentencePieceTokenizer(spm).sp
    for text in texts:
        assert model.tokenize(text.encode("utf-8"), add_bos=False, special=False) == sp.encode(text), text
        assert model.tokenize(text.encode("utf-8"), add_bos=True)[0] == sp.bos_id()


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
        model = llama(path, logits_all=True)
        ppl = perplexity(llama_logits(model, text), text)
        starts = [common_start([t for t, _ in zip(model.generate(p, temp=0.0, reset=True), range(32))], want)
                  for p, want in zip(prompts, greedy)]
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


MESSAGES = [
    {"role": "system", "content": "the model"},
    {"role": "user", "content": "train the model"},
    {"role": "assistant", "content": "data and 模型 训练"},
    {"role": "user", "content": "中文 文本 loss"},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": " model  loss"},
]


def test_chat_template_renders_our_prompt(trained, tiny_spm):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    folder, config_path, model_path, _ = trained
    model = llama(to_gguf(model_path, config_path, tiny_spm, folder / "chat.gguf", "f32", "--template", "alpaca"))
    tokenizer = SentencePieceTokenizer(tiny_spm)
    history = [("train the model", "data and 模型 训练"), ("中文 文本 loss", "")]
    want = chat_prompt(tokenizer, "alpaca", history, " model  loss", CTX, system="the model")
    formatter = Jinja2ChatFormatter(model.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    rendered = formatter(messages=MESSAGES).prompt  # what create_chat_completion tokenises, specials parsed
    assert model.tokenize(rendered.encode("utf-8"), add_bos=False, special=True) == want
    reply = model.create_chat_completion(MESSAGES, max_tokens=1, temperature=0.0)
    assert reply["usage"]["prompt_tokens"] == len(want)
    with pytest.raises(ValueError, match="unexpected role"):
        model.create_chat_completion(MESSAGES[2:], max_tokens=1)


def test_trained_model_answers_as_ours(trained, tiny_spm):
    """Multi-turn chat through create_chat_completion gives our ChatSession's greedy answers (f32 weights)."""
    folder, config_path, model_path, ours = trained
    tokenizer = SentencePieceTokenizer(tiny_spm)
    model = llama(to_gguf(model_path, config_path, tiny_spm, folder / "chat-f32.gguf", "f32", "--template", "alpaca"))
    session = ChatSession(Engine(ours, eos_ids=[tokenizer.eos_id]), tokenizer, "alpaca", seq_length=CTX,
                          max_new_tokens=24)
    answers = []
    for question in ("train the model", "中文 模型 数据", "the loss of 数据"):
        messages = [m for q, a in session.history for m in ({"role": "user", "content": q},
                                                             {"role": "assistant", "content": a})]
        want = session.ask(question)
        reply = model.create_chat_completion(messages + [{"role": "user", "content": question}], max_tokens=24,
                                             temperature=0.0)
        answers.append(reply["choices"][0]["message"]["content"])
        assert answers[-1] == want
    assert any(answers)


def test_bench_generate_llama_cpp_side():
    """bench/generate.py --llama_cpp runs, and llama.cpp's f32 greedy tokens equal ours on the benchmark weights."""
    import importlib.util

    from gguf_support import ROOT

    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--sizes", "tiny", "--batches", "1", "--new_tokens", "4", "--repeats", "1", "--llama_cpp",
                       "--llama_cpp_threads", "1"])
    cells = [row.strip("|").split("|") for row in rows]
    assert len(rows) == 2 and cells[1][1].strip() == "1" and cells[1][-1].strip() == "True"


def test_run_llama_cpp_answers_as_run_llama(trained, tiny_spm, tmp_path):
    """inference/run_llama_cpp.py on the GGUF writes the answers inference/run_llama.py writes (as quickstart.sh)."""
    import importlib.util

    from gguf_support import ROOT

    def main_of(name):
        spec = importlib.util.spec_from_file_location(name, ROOT / "inference" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    folder, config_path, model_path, _ = trained
    gguf_path = to_gguf(model_path, config_path, tiny_spm, tmp_path / "chat.gguf", "f32", "--template", "alpaca")
    questions = tmp_path / "questions.txt"
    questions.write_text("train the model\n中文 模型 数据\nthe loss of 数据\\nand 文本\n", encoding="utf-8")
    common = ["--test_path", str(questions), "--max_new_tokens", "24", "--temperature", "0", "--seq_length", "256"]
    main_of("run_llama")(["--load_model_path", str(model_path), "--config_path", str(config_path), "--spm_model_path",
                          str(tiny_spm), "--template", "alpaca", "--prediction_path", str(tmp_path / "ours.txt"),
                          "--quiet", *common])
    assert main_of("run_llama_cpp")(["--load_model_path", str(gguf_path), "--threads", "1", "--kv_cache_type", "f32",
                                     "--prediction_path",
                                     str(tmp_path / "theirs.txt"), *common]) == 0
    ours = (tmp_path / "ours.txt").read_text(encoding="utf-8")
    assert ours.count("\n") == 3 and ours.strip()
    assert (tmp_path / "theirs.txt").read_text(encoding="utf-8") == ours
