"""Text-level generation: streamed text and stop strings, chat prompts through templates, inference/run_llama.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import train_support
from conftest import generated_lines

from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.generation import Engine
from tencentpretrain.generation.chat import ChatSession, chat_prompt, encode_prompt, split_messages
from tencentpretrain.generation.text import TextStream, generate_text
from tencentpretrain.generation.weights import layout as layout_module
from tencentpretrain.generation.weights.layout import packing_available
from tencentpretrain.model import build_model
from tencentpretrain.registry import TEMPLATES
from tencentpretrain.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, "layers_num": 2, "dropout": 0.0,
        "max_seq_length": 256, "embedding": ["word"], "remove_transformer_bias": True,
        "remove_embedding_layernorm": True, "rotary_position_embedding": True, "encoder": "transformer",
        "feed_forward": "gated", "mask": "causal", "layernorm_positioning": "pre", "layernorm": "rms",
        "target": ["lm"], "hidden_act": "silu"}


def load_script(name: str):
    return train_support.load_script(name, "inference")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_spm):
    """(config path, checkpoint path, model) of a random tiny LLaMA over the tiny SentencePiece vocabulary."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = ModelConfig.from_dict(TINY)
    model = build_model(config, SentencePieceTokenizer(tiny_spm).vocab_size).eval()
    config.save(folder / "config.json")
    save_state_dict(model.state_dict(), folder / "model.bin")
    return folder / "config.json", folder / "model.bin", model


@pytest.fixture(scope="module")
def tokenizer(tiny_spm):
    return SentencePieceTokenizer(tiny_spm)


def stream_all(tokenizer, ids, stop=(), prefix=None):
    stream = TextStream(tokenizer, prefix, stop)
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.finish())
    return stream, pieces


def test_text_stream_reassembles_the_decoded_text(tokenizer):
    text = "the model reads 数据 and learns 😀 newline\nend"
    ids = tokenizer.encode(text)
    stream, pieces = stream_all(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == stream.text
    assert not any("\ufffd" in p for p in pieces)  # the emoji's bytes are held until complete
    assert sum(1 for p in pieces if p) > 5  # it really streamed


def test_text_stream_keeps_the_leading_space_after_a_prefix(tokenizer):
    ids = tokenizer.encode("the model")
    stream, _ = stream_all(tokenizer, ids[1:], prefix=ids[0])
    assert stream.text == tokenizer.decode(ids)[len(tokenizer.decode(ids[:1])):]
    assert stream.text.startswith(" ")


def test_text_stream_stops_on_a_string_split_across_tokens(tokenizer):
    ids = tokenizer.encode("the model reads tokens and learns")
    stream, pieces = stream_all(tokenizer, ids, stop=["s tok"])
    assert stream.stopped
    assert stream.text == "the model read"
    assert "".join(pieces) == stream.text  # nothing past the stop was ever emitted


def test_chat_prompt_renders_turns_like_training_and_drops_the_oldest(tokenizer):
    history = [("first question", "first answer"), ("second question", "second answer")]
    render = TEMPLATES.get("alpaca").render
    full = chat_prompt(tokenizer, "alpaca", history, "third", budget=10_000)
    expected = []
    for q, a in history:
        expected += [tokenizer.bos_id] + tokenizer.encode(render(q)) + tokenizer.encode(a) + [tokenizer.eos_id]
    expected += encode_prompt(tokenizer, render("third"))
    assert full == expected
    budget = len(full) - 1  # one token too few: the first turn goes
    cut = chat_prompt(tokenizer, "alpaca", history, "third", budget=budget)
    assert len(cut) <= budget and cut == expected[expected.index(tokenizer.eos_id) + 1:]
    tiny = chat_prompt(tokenizer, "alpaca", history, "third", budget=8)
    assert len(tiny) == 8 and tiny[0] == tokenizer.bos_id and tiny[-1] == full[-1]
    with_system = chat_prompt(tokenizer, "none", [], "hi", budget=100, system="be brief")
    assert tokenizer.decode(with_system) == "be brief\n\nhi"


def test_split_messages():
    system, turns, question = split_messages([
        {"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}])
    assert (system, turns, question) == ("s", [("q1", "a1")], "q2")
    with pytest.raises(ValueError, match="last message"):
        split_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        split_messages([{"role": "user", "content": "q"}, {"role": "user", "content": "q"}])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        split_messages([{"role": "user"}])


def test_generate_text_matches_token_generation(tiny_checkpoint, tokenizer):
    *_, model = tiny_checkpoint
    engine = Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
    prompts = [encode_prompt(tokenizer, "the model"), encode_prompt(tokenizer, "数据 模型 训练 and more words")]
    streamed = {0: "", 1: ""}
    completions = generate_text(engine, tokenizer, prompts, 20, on_text=lambda r, p: streamed.__setitem__(
        r, streamed[r] + p))
    tokens = engine.generate(prompts, 20)
    for row, completion in enumerate(completions):
        assert completion.text == streamed[row]
        assert completion.text == tokenizer.decode(prompts[row][-1:] + tokens[row])[
            len(tokenizer.decode(prompts[row][-1:])):].rstrip("\ufffd")
        assert completion.completion_tokens == len(tokens[row]) + (completion.finish_reason == "stop")


def test_chat_session_keeps_history(tiny_checkpoint, tokenizer):
    *_, model = tiny_checkpoint
    engine = Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
    session = ChatSession(engine, tokenizer, "alpaca", seq_length=200, max_tokens=16)
    first = session.ask("what is the model")
    second = session.ask("and the data")
    assert session.history == [("what is the model", first), ("and the data", second)]
    with pytest.raises(ValueError, match="no room"):
        ChatSession(engine, tokenizer, seq_length=16, max_tokens=16)


def test_run_llama_file_mode(tiny_checkpoint, tiny_spm, tmp_path):
    config, checkpoint, model = tiny_checkpoint
    run_llama = load_script("run_llama")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the model reads\n数据 模型\nline one\\nline two\n\n", encoding="utf-8")
    out = tmp_path / "result.txt"
    common = ["--load_model_path", str(checkpoint), "--config_path", str(config), "--spm_model_path", str(tiny_spm),
              "--test_path", str(prompts), "--prediction_path", str(out), "--seq_length", "64",
              "--max_new_tokens", "12", "--temperature", "0", "--quiet"]
    texts = run_llama.main(common + ["--batch_size", "3"])
    assert len(texts) == 4 and out.read_text(encoding="utf-8").count("\n") == 4
    assert run_llama.main(common) == texts  # batched (left-padded) greedy equals one by one
    tokenizer = SentencePieceTokenizer(tiny_spm)
    engine = Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
    ids = encode_prompt(tokenizer, "line one\nline two")
    (expected,) = generate_text(engine, tokenizer, [ids], 12)
    assert texts[2] == expected.text
    assert out.read_text(encoding="utf-8").splitlines()[2] == run_llama.escape(expected.text)
    sampled = run_llama.main(common[:-3] + ["--temperature", "1.0", "--seed", "1", "--quiet"])
    assert sampled == run_llama.main(common[:-3] + ["--temperature", "1.0", "--seed", "1", "--quiet"])


@pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")
def test_run_llama_weight_layouts_agree(tiny_checkpoint, tiny_spm, tmp_path, monkeypatch):
    """--weight_layout packed/both (every layer packed) write what the column-major default writes."""
    config, checkpoint, _ = tiny_checkpoint
    run_llama = load_script("run_llama")
    monkeypatch.setattr(layout_module, "PACK_MIN_WEIGHTS", 0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the model reads\n数据 模型\nline one\n", encoding="utf-8")
    common = ["--load_model_path", str(checkpoint), "--config_path", str(config), "--spm_model_path", str(tiny_spm),
              "--test_path", str(prompts), "--prediction_path", str(tmp_path / "out.txt"), "--seq_length", "64",
              "--max_new_tokens", "12", "--temperature", "0", "--quiet", "--batch_size", "3"]
    expected = run_llama.main(common + ["--weight_layout", "column"])
    assert run_llama.main(common) == expected  # auto: packed for --batch_size 3
    assert run_llama.main(common + ["--weight_layout", "both"]) == expected


def test_run_llama_interactive(tiny_checkpoint, tiny_spm, capsys):
    config, checkpoint, _ = tiny_checkpoint
    run_llama = load_script("run_llama")
    inputs = iter(["hello model", "/reset", "second", "third"])

    def read(_prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    session = run_llama.main(["--load_model_path", str(checkpoint), "--config_path", str(config),
                              "--spm_model_path", str(tiny_spm), "--interactive", "--template", "alpaca",
                              "--seq_length", "96", "--max_new_tokens", "8"], read=read)
    assert [q for q, _ in session.history] == ["second", "third"]
    assert capsys.readouterr().out.count("Assistant: ") == 3


def test_run_llama_bad_input(tiny_checkpoint, tiny_spm, tmp_path):
    config, checkpoint, _ = tiny_checkpoint
    run_llama = load_script("run_llama")
    base = ["--load_model_path", str(checkpoint), "--spm_model_path", str(tiny_spm), "--test_path", "x",
            "--prediction_path", str(tmp_path / "out.txt")]
    with pytest.raises(SystemExit) as err:
        run_llama.main(base)  # no such --test_path
    assert err.value.code == 2
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n", encoding="utf-8")
    base[base.index("x")] = str(prompts)
    with pytest.raises(InputError, match="config_path"):
        run_llama.main(base)  # no --config_path for a checkpoint file
    with pytest.raises(SystemExit) as err:
        run_llama.main(base + ["--config_path", str(config), "--top_p", "0"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        run_llama.main(base + ["--config_path", str(config), "--max_new_tokens", "600"])
    assert err.value.code == 2
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not available")
def test_stream_with_the_llama_tokenizer():
    tokenizer = SentencePieceTokenizer(SHARED / "tokenizers" / "llama_tokenizer.model")
    text = "Hello world, 你好世界! 🦙 Tabs\tand\nnewlines."
    ids = tokenizer.encode(text)
    stream, pieces = stream_all(tokenizer, ids[1:], prefix=ids[0])
    assert tokenizer.decode(ids[:1]) + "".join(pieces) == tokenizer.decode(ids) == text


def test_run_llama_says_how_many_tokens_it_cut(tiny_checkpoint, tiny_spm, tmp_path, capsys):
    """A prompt longer than --seq_length - --max_new_tokens loses its start, and the user is told how much."""
    config, checkpoint, model = tiny_checkpoint
    run_llama = load_script("run_llama")
    long_prompt = " ".join(generated_lines(6, seed=4))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"short\n{long_prompt}\n", encoding="utf-8")
    tokenizer = SentencePieceTokenizer(tiny_spm)
    ids = encode_prompt(tokenizer, long_prompt)
    assert len(ids) > 24
    texts = run_llama.main(["--load_model_path", str(checkpoint), "--config_path", str(config), "--spm_model_path",
                            str(tiny_spm), "--test_path", str(prompts), "--prediction_path", str(tmp_path / "o.txt"),
                            "--seq_length", "32", "--max_new_tokens", "8", "--temperature", "0", "--quiet"])
    err = capsys.readouterr().err
    assert f"prompt 2 of {prompts} has {len(ids)} tokens; cut {len(ids) - 24} from its start" in err
    assert "prompt 1 " not in err
    engine = Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
    (expected,) = generate_text(engine, tokenizer, [ids[:1] + ids[-23:]], 8)  # bos and the last 23 tokens
    assert texts[1] == expected.text


def test_run_llama_names_the_line_that_is_not_utf8(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"fine\n" + "数据".encode() + b"\nbad \xff byte\n")
    with pytest.raises(InputError, match=rf"--test_path {prompts}: not UTF-8 at line 3"):
        load_script("run_llama").read_prompts(prompts)


def test_chat_says_when_a_message_alone_is_cut(tiny_spm, capsys):
    import argparse

    run_llama = load_script("run_llama")
    args = argparse.Namespace(seq_length=200, max_new_tokens=8, template="alpaca")
    tokenizer = SentencePieceTokenizer(tiny_spm)
    run_llama.warn_if_cut(args, tokenizer, "short")
    assert capsys.readouterr().err == ""
    long_message = " ".join(generated_lines(30, seed=2))
    tokens = len(encode_prompt(tokenizer, TEMPLATES.get("alpaca").render(long_message)))
    run_llama.warn_if_cut(args, tokenizer, long_message)
    assert tokens > 192
    assert f"has {tokens} tokens with the template; its first {tokens - 192} are cut" in capsys.readouterr().err
