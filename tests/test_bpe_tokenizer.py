"""Hugging Face byte-level BPE tokenizers (``--tokenizer_path``) against transformers' AutoTokenizer: tiny ones
trained here (always run) and the real Llama-3 and Qwen3 tokenizers of ../shared (skipped without it); the
special tokens each model was trained with in the ``lm``, ``alpaca`` and ``chat`` datasets; bad input named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import generated_lines
from train_support import load_script

from tencentpretrain.cli import run_cli
from tencentpretrain.data import BinaryDataset
from tencentpretrain.tokenizers import HuggingFaceTokenizer, TokenizerError, open_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {name: SHARED / "tokenizers" / name for name in ("llama3", "qwen3")}
HARD_TEXTS = [
    "Hello world", " leading space", "trailing space ", "  runs   of    spaces", "\n\n\nnewlines\n\n", "\r\n windows",
    "tab\tand\t\ttabs", "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n", "emoji 😀🎉👍🏽👨‍👩‍👧 flags 🇨🇳",
    "中文文本，标点。数字１２３", "数据 模型 训练", "numbers 1234567 3.14159 1e-9", "I'm you're they'll WE'VE",
    "special <|im_end|> and <|endoftext|> and <|eot_id|> <|begin_of_text|> in text", "<|im_start|>user\nhi<|im_end|>",
    "combining é and precomposed é", "Ω≈ç√∫ ½ ∑ ™ ©", "", " ", "\u00a0nbsp\u3000ideographic space",
]


def corpus_texts(limit: int = 150) -> list[str]:
    texts = []
    for name in ("clue_small_zh.txt", "wiki_demo_en.txt"):
        path = SHARED / "corpora" / name
        if path.is_file():
            texts += path.read_text(encoding="utf-8").splitlines()[:limit]
    return texts


def transformers_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(folder))
    return [reference(text, add_special_tokens=False).input_ids for text in texts]


@pytest.mark.parametrize("which", ["tiny_bpe", "tiny_qwen_bpe"])
def test_tiny_bpe_ids_equal_transformers_and_round_trip(request, which):
    folder = request.getfixturevalue(which)
    tokenizer = HuggingFaceTokenizer(folder)
    texts = HARD_TEXTS + generated_lines(50, seed=3)
    assert tokenizer.encode_batch(texts) == transformers_ids(folder, texts)
    assert [tokenizer.encode(t) for t in texts] == tokenizer.encode_batch(texts)
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
        assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_tokenizer_ids_equal_transformers(name):
    folder = REAL[name]
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"{folder} not present (../shared)")
    tokenizer = HuggingFaceTokenizer(folder)
    texts = HARD_TEXTS + corpus_texts()
    mine = tokenizer.encode_batch(texts)
    assert mine == transformers_ids(folder, texts)
    assert all(tokenizer.decode(ids) == text for text, ids in zip(texts, mine) if "é" not in text or name != "qwen3")
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.vocab_size == len(reference)
    assert tokenizer.bos_id == reference.bos_token_id and tokenizer.eos_id == reference.eos_token_id


def test_real_tokenizers_special_tokens_and_end_tokens():
    if not (REAL["llama3"] / "tokenizer.json").is_file():
        pytest.skip("../shared not present")
    llama3, qwen3 = HuggingFaceTokenizer(REAL["llama3"]), HuggingFaceTokenizer(REAL["qwen3"])
    assert (llama3.vocab_size, llama3.bos_id, llama3.eos_id) == (128256, 128000, 128001)
    assert set(llama3.end_ids) == {128001, 128009}  # <|end_of_text|>, <|eot_id|>
    assert (qwen3.vocab_size, qwen3.bos_id, qwen3.eos_id, qwen3.pad_id) == (151669, None, 151645, 151643)
    assert set(qwen3.end_ids) == {151645, 151643}  # <|im_end|>, <|endoftext|>


def test_special_tokens_end_tokens_and_overrides(tiny_bpe, tiny_qwen_bpe, tmp_path):
    llama_like, qwen_like = HuggingFaceTokenizer(tiny_bpe), HuggingFaceTokenizer(tiny_qwen_bpe)
    token = llama_like.tk.token_to_id
    assert llama_like.vocab_size == 400 and token("<|eot_id|>") == 399
    assert llama_like.special_tokens == {"bos": token("<|begin_of_text|>"), "eos": token("<|end_of_text|>"),
                                         "pad": token("<|end_of_text|>"), "unk": None}
    assert set(llama_like.end_ids) == {token("<|end_of_text|>"), token("<|eot_id|>")}
    assert qwen_like.bos_id is None and qwen_like.pad_id == qwen_like.tk.token_to_id("<|endoftext|>")
    assert HuggingFaceTokenizer(tiny_bpe, {"eos": "<|eot_id|>", "pad": 5}).special_tokens["eos"] == token("<|eot_id|>")
    folder = tmp_path / "with_generation_config"
    shutil.copytree(tiny_bpe, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    assert set(HuggingFaceTokenizer(folder).end_ids) >= {7, 8}
    # the fingerprint covers tokenizer.json and tokenizer_config.json: the same for the file and its directory,
    # another when the special tokens change
    assert HuggingFaceTokenizer(tiny_bpe).fingerprint == HuggingFaceTokenizer(tiny_bpe / "tokenizer.json").fingerprint
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eot_id|>"}))
    assert HuggingFaceTokenizer(folder).fingerprint != HuggingFaceTokenizer(tiny_bpe).fingerprint


def test_gpt2_vocab_and_merges_equal_transformers(tiny_bpe, tmp_path):
    """GPT-2's own files: vocab.json + merges.txt, read as transformers' GPT2Tokenizer reads them."""
    from transformers import GPT2Tokenizer

    HuggingFaceTokenizer(tiny_bpe).tk.model.save(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    ours = HuggingFaceTokenizer(tmp_path / "vocab.json")
    reference = GPT2Tokenizer.from_pretrained(str(tmp_path))  # reads vocab.json and merges.txt
    texts = [t for t in HARD_TEXTS if "<|" not in t] + generated_lines(30, seed=5)
    assert ours.encode_batch(texts) == [reference(t, add_special_tokens=False).input_ids for t in texts]
    assert ours.eos_id == vocab["<|endoftext|>"] and ours.bos_id is None
    assert HuggingFaceTokenizer(tmp_path).vocab_size == len(vocab)  # the directory finds vocab.json


def preprocess(*argv: str) -> dict:
    return load_script("preprocess").main(list(argv))


def test_lm_dataset_has_bos_where_the_model_was_trained_with_one(tmp_path, tiny_bpe, tiny_qwen_bpe):
    corpus = tmp_path / "corpus.txt"
    lines = generated_lines(40, seed=2)
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, folder in (("llama3", tiny_bpe), ("qwen", tiny_qwen_bpe)):
        preprocess("--corpus_path", str(corpus), "--tokenizer_path", str(folder), "--dataset_path",
                   str(tmp_path / name), "--seq_length", "16", "--tail", "pad")
        tokenizer = HuggingFaceTokenizer(folder)
        ds = BinaryDataset(tmp_path / name)
        stream = np.concatenate([ds.tokens[int(a):int(b)] for a, b in zip([0, *ds.offsets[:-1]], ds.offsets)])
        docs = tokenizer.encode_batch(lines)
        prefix = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        expected = [i for doc in docs for i in [*prefix, *doc, tokenizer.eos_id]]
        assert stream.tolist() == expected
        assert ds.meta["tokenizer"] == "huggingface" and ds.meta["special_tokens"]["bos"] == tokenizer.bos_id
        assert ds.meta["tokenizer_fingerprint"] == tokenizer.fingerprint


def test_alpaca_and_chat_datasets_with_a_qwen_like_tokenizer(tmp_path, tiny_qwen_bpe):
    from transformers import AutoTokenizer

    records = [{"instruction": "what is a model", "input": "", "output": "a thing that learns"},
               {"instruction": "数据", "input": "训练", "output": "模型 😀"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    preprocess("--corpus_path", str(tmp_path / "alpaca.json"), "--tokenizer_path", str(tiny_qwen_bpe),
               "--dataset_path", str(tmp_path / "sft"), "--data_processor", "alpaca", "--seq_length", "256")
    tokenizer = HuggingFaceTokenizer(tiny_qwen_bpe)
    from tencentpretrain.registry import TEMPLATES

    sft = BinaryDataset(tmp_path / "sft")
    for i, record in enumerate(records):  # no bos: prompt + response + eos, the loss on response + eos alone
        prompt = tokenizer.encode(TEMPLATES.get("alpaca").render(record["instruction"], record["input"]))
        response = tokenizer.encode(record["output"])
        tokens, mask = sft[i]
        assert tokens[:len(prompt) + len(response) + 1].tolist() == [*prompt, *response, tokenizer.eos_id]
        assert tokens[1:][mask].tolist() == [*response, tokenizer.eos_id]
    conversations = [{"messages": [{"role": "user", "content": "what is a model"},
                                   {"role": "assistant", "content": "a thing 😀"}]}]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations),
                                         encoding="utf-8")
    preprocess("--corpus_path", str(tmp_path / "chat.jsonl"), "--tokenizer_path", str(tiny_qwen_bpe),
               "--dataset_path", str(tmp_path / "chat"), "--data_processor", "chat", "--template",
               str(tiny_qwen_bpe), "--seq_length", "64", "--tail", "pad")
    ds = BinaryDataset(tmp_path / "chat")
    reference = AutoTokenizer.from_pretrained(str(tiny_qwen_bpe))
    expected = reference.apply_chat_template(conversations[0]["messages"], tokenize=True, return_dict=False)
    assert ds.tokens[:len(expected)].tolist() == list(expected)


@pytest.mark.parametrize("name, content, message", [
    ("missing.json", None, "tokenizer file not found"),
    ("", None, "a directory without tokenizer.json"),
    ("tokenizer.model", "x", "expected a tokenizer.json"),
    ("vocab.json", "{}", "needs merges.txt beside it"),
    ("tokenizer.json", '{"model": 3}', "not a Hugging Face tokenizer"),
    ("tokenizer.json", "", "not a Hugging Face tokenizer"),
])
def test_bad_tokenizer_files_are_named(tmp_path, capsys, name, content, message):
    folder = tmp_path / "tok"
    folder.mkdir()
    path = folder / name if name else folder
    if content is not None:
        path.write_text(content)
    (tmp_path / "corpus.txt").write_text("hello\n")
    argv = ["--corpus_path", str(tmp_path / "corpus.txt"), "--tokenizer_path", str(path), "--dataset_path",
            str(tmp_path / "ds")]
    assert run_cli(load_script("preprocess").main, argv) == 1
    err = capsys.readouterr().err
    assert f"--tokenizer_path {path}" in err and message in err
    assert not (tmp_path / "ds").exists()


def test_bad_special_tokens_and_both_tokenizer_flags(tmp_path, tiny_bpe, tiny_spm, capsys):
    with pytest.raises(TokenizerError, match=r"special token eos='<\|nope\|>' \(the override\) is not a token"):
        HuggingFaceTokenizer(tiny_bpe, {"eos": "<|nope|>"})
    folder = tmp_path / "no_eos"
    shutil.copytree(tiny_bpe, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
    with pytest.raises(TokenizerError, match="no eos token"):
        HuggingFaceTokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|missing|>"}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json\) is not a token"):
        HuggingFaceTokenizer(folder)
    with pytest.raises(TokenizerError, match="not both"):
        open_tokenizer(tiny_spm, tiny_bpe)
    (tmp_path / "corpus.txt").write_text("hello\n")
    assert run_cli(load_script("preprocess").main, ["--corpus_path", str(tmp_path / "corpus.txt")]) == 1
    assert "--spm_model_path" in capsys.readouterr().err


def test_a_tiny_qwen3_tunes_converts_back_and_chats_as_transformers_does(tmp_path, tiny_qwen_bpe):
    """HF Qwen3 (embeddings padded past the tokenizer, like Qwen's) -> ours -> continued pretraining on an lm dataset
    -> instruction tuning on a chat dataset made through its own template -> HF with the tokenizer; our server's
    greedy chat answer equals transformers' generate on the model and tokenizer written, prompted with the template
    from its tokenizer_config.json."""
    import torch
    from server_thread import ServerThread
    from test_convert import hf_to_ours, ours_to_hf
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tencentpretrain.generation.options import add_model_args, load_engine
    from tencentpretrain.serving.app import Service, create_app

    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(Qwen3Config(vocab_size=416, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=24, num_hidden_layers=2,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      initializer_range=0.1)).eval()
    hf.save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_qwen_bpe / name, tmp_path / "hf" / name)
    start, config = tmp_path / "start.bin", tmp_path / "qwen3.json"
    assert hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(start),
                       "--output_config_path", str(config), "--allow_padded_vocab"]) == 0
    tokenizer_dir = str(tmp_path / "hf")  # the tokenizer files travel with the model
    (tmp_path / "corpus.txt").write_text("\n".join(generated_lines(200, seed=6)) + "\n", encoding="utf-8")
    preprocess("--corpus_path", str(tmp_path / "corpus.txt"), "--tokenizer_path", tokenizer_dir, "--dataset_path",
               str(tmp_path / "lm"), "--seq_length", "64")
    continued = tmp_path / "continued" / "qwen3"  # stage 1: continued pretraining on plain text
    load_script("pretrain").main([
        "--dataset_path", str(tmp_path / "lm"), "--tokenizer_path", tokenizer_dir, "--config_path", str(config),
        "--pretrained_model_path", str(start), "--output_model_path", str(continued), "--data_processor", "lm",
        "--total_steps", "6", "--save_checkpoint_steps", "6", "--report_steps", "3", "--batch_size", "4",
        "--learning_rate", "1e-3", "--warmup", "0.05"])
    talks = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in
             [("what is a model", "a thing that learns"), ("数据 模型", "训练 语言"), ("emoji", "😀 🎉")]]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": t}, ensure_ascii=False) + "\n"
                                                 for t in talks * 8), encoding="utf-8")
    preprocess("--corpus_path", str(tmp_path / "chat.jsonl"), "--tokenizer_path", tokenizer_dir, "--dataset_path",
               str(tmp_path / "chat"), "--data_processor", "chat", "--template", tokenizer_dir, "--seq_length", "64")
    out = tmp_path / "tuned" / "qwen3"
    load_script("pretrain").main([
        "--dataset_path", str(tmp_path / "chat"), "--tokenizer_path", tokenizer_dir, "--config_path", str(config),
        "--pretrained_model_path", f"{continued}.bin", "--output_model_path", str(out), "--data_processor", "chat",
        "--total_steps", "12", "--save_checkpoint_steps", "12", "--report_steps", "4", "--batch_size", "4",
        "--learning_rate", "3e-3", "--warmup", "0.05"])
    assert ours_to_hf(["--input_model_path", f"{out}.bin", "--config_path", str(config), "--output_model_path",
                       str(tmp_path / "hf_tuned"), "--tokenizer_path", tokenizer_dir]) == 0

    reference = AutoTokenizer.from_pretrained(str(tmp_path / "hf_tuned"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_tuned")).eval()
    question = [{"role": "user", "content": "what is a model"}]
    prompt = reference.apply_chat_template(question, add_generation_prompt=True, tokenize=True, return_dict=False)
    ends = model.generation_config.eos_token_id
    assert set(ends) == {reference.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    generated = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=ends,
                               pad_token_id=reference.pad_token_id)[0, len(prompt):].tolist()
    expected = reference.decode([t for t in generated if t not in ends])

    import argparse

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--load_model_path", f"{out}.bin", "--config_path", str(config), "--tokenizer_path",
                              tokenizer_dir, "--template", tokenizer_dir])
    engine, tokenizer = load_engine(args, batch_size=2)
    httpd = ServerThread(create_app(Service(engine, tokenizer, model_name="qwen3-tiny", template=args.template,
                                            seq_length=128, max_tokens=12))).start()
    try:
        status, data = post_json(httpd, "/v1/chat/completions", {"messages": question, "max_tokens": 12,
                                                                 "temperature": 0})
    finally:
        httpd.close()
    assert expected.strip()  # the tuned model answers (it learned "a thing that learns" here)
    assert status == 200 and data["choices"][0]["message"]["content"] == expected
    assert data["usage"]["prompt_tokens"] == len(prompt)


def post_json(server, path: str, body: dict) -> tuple[int, dict]:
    import http.client

    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def test_streamed_text_is_whole_characters(tiny_bpe):
    """Byte-level tokens split emoji and CJK characters across tokens: the stream holds a piece back until its
    character is complete, so no piece carries U+FFFD and the pieces add up to the decoded text."""
    from tencentpretrain.generation.text import REPLACEMENT, TextStream

    tokenizer = HuggingFaceTokenizer(tiny_bpe)
    text = "emoji 😀🎉👍🏽 中文文本 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓"
    ids = tokenizer.encode(text)
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids)  # some tokens are parts of a character
    stream = TextStream(tokenizer, prefix=tokenizer.encode("say")[-1])
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.finish())
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == text


def test_bench_preprocess_bpe_counts_the_same_tokens_as_the_library(tmp_path, tiny_qwen_bpe, capsys):
    """bench/preprocess.py --tokenizer_path: ours and raw tokenizers encode the same corpus to the same number of
    tokens (the bench asserts it) at 1 and 2 processes, and it prints both rates."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(generated_lines(300, seed=8)) + "\n", encoding="utf-8")
    load_script("preprocess", "bench").main(["--corpus", str(corpus), "--tokenizer_path", str(tiny_qwen_bpe),
                                             "--repeat", "2", "--processes_num", "2", "--trials", "1",
                                             "--seq_length", "64"])
    out = capsys.readouterr().out
    assert "raw tokenizers" in out and "ours, 1 process(es)" in out and "ours, 2 process(es)" in out
    assert "ours/raw" in out


def test_template_auto_is_the_tokenizers_own(tiny_bpe, tiny_qwen_bpe, tiny_spm, tmp_path):
    """The server's default --template auto: a Hugging Face tokenizer's chat template (tokenizer_config.json's, or a
    chat_template.jinja beside it), else alpaca."""
    from conftest import CHATML

    from tencentpretrain.generation.options import own_template
    from tencentpretrain.tokenizers import SentencePieceTokenizer

    assert own_template(HuggingFaceTokenizer(tiny_qwen_bpe)).source == CHATML
    assert own_template(HuggingFaceTokenizer(tiny_bpe)).name == "alpaca"  # no chat_template in its config
    assert own_template(SentencePieceTokenizer(tiny_spm)).name == "alpaca"
    folder = tmp_path / "jinja"
    shutil.copytree(tiny_bpe, folder)
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    assert own_template(HuggingFaceTokenizer(folder)).source == "{{ messages[0]['content'] }}"
    assert load_script("server", "inference").build_parser().parse_args(
        ["--load_model_path", "m.bin"]).template == "auto"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, tiny_qwen_bpe):
    """A tiny random Hugging Face Qwen3 directory with the Qwen-like tokenizer's files in it."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=416, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=24, num_hidden_layers=2,
                                         max_position_embeddings=256, tie_word_embeddings=True,
                                         initializer_range=0.2)).eval()
    folder = tmp_path_factory.mktemp("qwen3") / "hf"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_qwen_bpe / name, folder / name)
    return folder


def test_evaluate_perplexity_of_a_qwen3_directory_equals_transformers(qwen3_dir, tmp_path):
    """scripts/evaluate.py on a Hugging Face directory with a tokenizer.json: its tokenizer found there, each
    document scored after eos (there is no bos: lm-eval's prefix), as transformers scores it."""
    import torch
    from transformers import AutoModelForCausalLM

    docs = ["what is a model", "数据 模型 训练 😀", "def f(x):\n    return x"]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    tokenizer = HuggingFaceTokenizer(qwen3_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(qwen3_dir)).eval()
    nll = 0.0
    for doc in docs:
        ids = torch.tensor([[tokenizer.eos_id, *tokenizer.encode(doc)]])
        with torch.no_grad():
            logprobs = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        nll -= float(logprobs.gather(1, ids[0, 1:, None]).sum())
    out = tmp_path / "ppl.json"
    assert load_script("evaluate", "scripts").main(["--task", "perplexity", "--load_model_path", str(qwen3_dir),
                                                    "--corpus_path", str(corpus), "--output_path", str(out)]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["tokens"] == sum(len(tokenizer.encode(d)) for d in docs)
    assert got["nll"] == pytest.approx(nll, rel=1e-5)


def test_run_llama_with_tokenizer_path_generates_as_transformers(qwen3_dir, tmp_path):
    """inference/run_llama.py --tokenizer_path on a converted Qwen3: greedy text equal to transformers' generate
    (no bos before the prompt, stopped at an end token or the length)."""
    import torch
    from test_convert import hf_to_ours
    from transformers import AutoModelForCausalLM

    model, config = tmp_path / "q.bin", tmp_path / "q.json"
    assert hf_to_ours(["--input_model_path", str(qwen3_dir), "--output_model_path", str(model),
                       "--output_config_path", str(config)]) == 0
    prompts = ["the model reads", "数据 模型"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    texts = load_script("run_llama", "inference").main([
        "--load_model_path", str(model), "--config_path", str(config), "--tokenizer_path", str(qwen3_dir),
        "--test_path", str(tmp_path / "prompts.txt"), "--prediction_path", str(out), "--temperature", "0",
        "--max_new_tokens", "12", "--quiet"])
    tokenizer = HuggingFaceTokenizer(qwen3_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(qwen3_dir)).eval()
    expected = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        new = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                          eos_token_id=list(tokenizer.end_ids), pad_token_id=tokenizer.pad_id)[0, len(ids):].tolist()
        expected.append(tokenizer.decode([t for t in new if t not in tokenizer.end_ids]).rstrip("\ufffd"))
    assert texts == expected and out.is_file()


def test_conversion_carries_the_chat_template_beside_the_checkpoint(qwen3_dir, tmp_path, tiny_bpe, capsys):
    """Hugging Face -> ours writes the directory's chat template as <model>.chat_template.jinja, which --template
    auto then finds for that checkpoint; a broken template stops the conversion before any output."""
    from conftest import CHATML
    from test_convert import hf_to_ours

    from tencentpretrain.data.chat_template import chat_template_path
    from tencentpretrain.generation.options import own_template

    out = tmp_path / "q.bin"
    assert hf_to_ours(["--input_model_path", str(qwen3_dir), "--output_model_path", str(out)]) == 0
    assert chat_template_path(out).read_text(encoding="utf-8") == CHATML
    assert own_template(HuggingFaceTokenizer(tiny_bpe), out).source == CHATML  # its tokenizer has no template
    broken = tmp_path / "broken"
    shutil.copytree(qwen3_dir, broken)
    config = json.loads((broken / "tokenizer_config.json").read_text(encoding="utf-8"))
    (broken / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{% for m in x %}"}))
    assert run_cli(hf_to_ours, ["--input_model_path", str(broken), "--output_model_path", str(tmp_path / "b.bin")]) == 1
    assert "tokenizer_config.json" in capsys.readouterr().err
    assert not (tmp_path / "b.bin").exists() and not chat_template_path(tmp_path / "b.bin").exists()


def test_pretrain_refuses_a_dataset_made_with_other_special_tokens(tmp_path, tiny_bpe, capsys):
    """The fingerprint covers tokenizer_config.json: the same tokenizer.json with another eos made another dataset."""
    from train_support import write_config

    other = tmp_path / "other_eos"
    shutil.copytree(tiny_bpe, other)
    config = json.loads((other / "tokenizer_config.json").read_text(encoding="utf-8"))
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eot_id|>"}))
    (tmp_path / "corpus.txt").write_text("\n".join(generated_lines(100, seed=4)) + "\n", encoding="utf-8")
    preprocess("--corpus_path", str(tmp_path / "corpus.txt"), "--tokenizer_path", str(tiny_bpe), "--dataset_path",
               str(tmp_path / "ds"), "--seq_length", "16")
    argv = ["--dataset_path", str(tmp_path / "ds"), "--tokenizer_path", str(other), "--config_path",
            str(write_config(tmp_path)), "--output_model_path", str(tmp_path / "out" / "m"), "--total_steps", "1"]
    assert run_cli(load_script("pretrain").main, argv) == 1
    err = capsys.readouterr().err
    assert "another tokenizer" in err and "fingerprint" in err and str(other) in err
    assert not (tmp_path / "out").exists()
