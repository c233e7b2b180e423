"""GGUF export read back with the gguf package itself: metadata, vocabulary, tensor names and layout, quantisation
error, the chat template, memory, errors, and the way back to our format (llama.cpp runs them in
test_gguf_llama_cpp.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from gguf_support import SHAPES, merge_tokenizers, random_state, script, tiny_config, to_gguf, write_checkpoint

gguf = pytest.importorskip("gguf")

from tencentpretrain import load_model  # noqa: E402
from tencentpretrain.checkpoint import load_state_dict  # noqa: E402
from tencentpretrain.config import ModelConfig  # noqa: E402
from tencentpretrain.convert.gguf import LazyTensor, write_gguf  # noqa: E402
from tencentpretrain.convert.gguf_vocab import Vocabulary, read_vocabulary  # noqa: E402
from tencentpretrain.convert.llama import LLAMA_ARCHITECTURE  # noqa: E402
from tencentpretrain.data.templates import ALPACA  # noqa: E402
from tencentpretrain.generation.chat import chat_prompt  # noqa: E402
from tencentpretrain.tokenizers import SentencePieceTokenizer  # noqa: E402

T = gguf.GGMLQuantizationType
VOCAB = 416  # the 400-piece tokenizer and 16 padding rows


def field(reader, key):
    return reader.get_field(key).contents()


def tensors_of(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def export(tmp_path, tiny_spm, shape="gqa", outtype="f32", *extra, seed=0):
    config = tiny_config(shape, VOCAB)
    state = random_state(config, VOCAB, seed)
    model, cfg = write_checkpoint(tmp_path / shape, config, state)
    return config, state, to_gguf(model, cfg, tiny_spm, tmp_path / f"{shape}-{outtype}.gguf", outtype, *extra)


@pytest.mark.parametrize("shape", SHAPES)
def test_metadata_names_and_shapes(tmp_path, tiny_spm, shape):
    config, state, path = export(tmp_path, tiny_spm, shape)
    reader = gguf.GGUFReader(path)
    hidden, heads, kv, layers, ffn, tied = SHAPES[shape]
    assert field(reader, "general.architecture") == "llama"
    expected = {"llama.context_length": 256, "llama.embedding_length": hidden, "llama.block_count": layers,
                "llama.feed_forward_length": ffn, "llama.attention.head_count": heads,
                "llama.attention.head_count_kv": kv, "llama.rope.dimension_count": hidden // heads,
                "llama.vocab_size": VOCAB, "general.file_type": 0}
    assert {k: field(reader, k) for k in expected} == expected
    assert field(reader, "llama.rope.freq_base") == 5000.0
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    names = {t.name: [int(n) for n in t.shape] for t in reader.tensors}  # GGUF lists the fastest dimension first
    layer = {"attn_norm": [hidden], "attn_q": [hidden, hidden], "attn_k": [hidden, kv * hidden // heads],
             "attn_v": [hidden, kv * hidden // heads], "attn_output": [hidden, hidden], "ffn_norm": [hidden],
             "ffn_gate": [hidden, ffn], "ffn_up": [hidden, ffn], "ffn_down": [ffn, hidden]}
    want = {"token_embd.weight": [hidden, VOCAB], "output_norm.weight": [hidden]}
    want |= {f"blk.{i}.{k}.weight": v for i in range(layers) for k, v in layer.items()}
    if not tied:
        want["output.weight"] = [hidden, VOCAB]
    assert names == want
    assert all(t.tensor_type == T.F32 for t in reader.tensors)
    data = tensors_of(path)
    # our q/k rows are Meta's interleaved rotary layout, which llama.cpp's llama rope expects: written unpermuted
    assert np.array_equal(data["blk.1.attn_q.weight"].data, state["encoder.transformer.1.self_attn.linear_layers.0"
                                                                  ".weight"].numpy())
    assert np.array_equal(data["token_embd.weight"].data, state["embedding.word.embedding.weight"].numpy())


def test_vocabulary_metadata(tmp_path, tiny_spm):
    _, _, path = export(tmp_path, tiny_spm)
    reader = gguf.GGUFReader(path)
    sp = SentencePieceTokenizer(tiny_spm).sp
    tokens, scores = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    n = sp.get_piece_size()
    assert tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, VOCAB)]
    assert scores[:n] == pytest.approx([sp.get_score(i) for i in range(n)])
    kind = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    assert types[:n] == kind and set(types[n:]) == {5}
    assert kind.count(6) == 256 and kind.count(3) == 3  # bytes; bos, eos and pad
    assert field(reader, "tokenizer.ggml.model") == "llama"
    ids = {k: field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    assert ids == {"bos": sp.bos_id(), "eos": sp.eos_id(), "unknown": sp.unk_id(), "padding": sp.pad_id()}
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    assert field(reader, "tokenizer.ggml.add_space_prefix") is True
    assert reader.get_field("tokenizer.chat_template") is None  # no --template


def test_user_defined_pieces_and_warnings(tmp_path):
    import sentencepiece

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"hello world {i} <tool> again" for i in range(200)) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "uni"), vocab_size=40, hard_vocab_limit=False,
        model_type="unigram", user_defined_symbols=["<tool>"], minloglevel=2)
    vocab = read_vocabulary(tmp_path / "uni.model", 64)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "uni.model"))
    assert vocab.types[sp.piece_to_id("<tool>")] == 4
    assert "pad" not in vocab.special and vocab.special["unk"] == sp.unk_id()
    text = " ".join(vocab.warnings)
    assert "not a BPE model" in text and "normalises text" in text and "no byte fallback" in text
    assert read_vocabulary(tmp_path / "uni.model", 64).tokens[-1] == "[PAD63]"


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_quantised_tensors_within_block_error(tmp_path, tiny_spm, outtype):
    config, state, path = export(tmp_path, tiny_spm, "gqa", outtype)
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.file_type") == {"q8_0": 7, "q4_0": 2}[outtype]
    data = tensors_of(path)
    qtype = T.Q8_0 if outtype == "q8_0" else T.Q4_0
    assert data["blk.0.attn_norm.weight"].tensor_type == T.F32
    assert data["output.weight"].tensor_type == T.Q8_0  # kept in 8 bits under q4_0
    ours = "encoder.transformer.1.feed_forward.linear_2.weight"
    assert data["blk.1.ffn_down.weight"].tensor_type == qtype
    back = gguf.quants.dequantize(data["blk.1.ffn_down.weight"].data, qtype)
    weight = state[ours].numpy()
    blocks = np.abs(weight).reshape(-1, 32).max(axis=1, keepdims=True)
    error = np.abs(back - weight).reshape(-1, 32)
    step = blocks / (127 if outtype == "q8_0" else 8)  # scale of a block: its largest weight over the top code
    # round to nearest (q4_0 clips +8 steps to +7), plus the scale's own rounding to f16 over the codes' range
    bound = step * (0.5 + 127 / 2048 if outtype == "q8_0" else 1 + 8 / 2048)
    assert np.all(error <= bound + 1e-7), float((error / bound).max())
    assert error.mean() > 0  # really quantised


def test_tied_q4_0_keeps_embedding_in_8_bits_and_odd_rows_in_f16(tmp_path, tiny_spm):
    _, _, path = export(tmp_path, tiny_spm, "mha-tied", "q4_0")
    data = tensors_of(path)
    assert "output.weight" not in data and data["token_embd.weight"].tensor_type == T.Q8_0
    assert data["blk.0.attn_q.weight"].tensor_type == T.Q4_0
    config = ModelConfig.from_dict({**LLAMA_ARCHITECTURE, "emb_size": 48, "hidden_size": 48, "heads_num": 4,
                                    "layers_num": 1, "feedforward_size": 64})
    state = random_state(config, VOCAB)
    model, cfg = write_checkpoint(tmp_path / "odd", config, state)
    data = tensors_of(to_gguf(model, cfg, tiny_spm, tmp_path / "odd.gguf", "q8_0"))
    assert data["blk.0.attn_q.weight"].tensor_type == T.F16  # 48 columns do not split into blocks of 32
    assert data["blk.0.ffn_down.weight"].tensor_type == T.Q8_0  # 64 columns do


def test_from_huggingface_directory_permutes_rotary_back(tmp_path, tiny_spm):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=8,
                                      num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=256,
                                      tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(tiny_spm.read_bytes())
    argv = ["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(tmp_path / "hf.gguf"),
            "--outtype", "f32"]
    assert script("convert_llama_from_tencentpretrain_to_gguf")(argv) == 0
    data = tensors_of(tmp_path / "hf.gguf")

    def llama_cpp_permute(w, heads):  # llama.cpp's converter: transformers' halves back to interleaved pairs
        return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    hf_state = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert np.array_equal(data["blk.1.attn_q.weight"].data, llama_cpp_permute(hf_state[
        "model.layers.1.self_attn.q_proj.weight"], 8))
    assert np.array_equal(data["blk.1.attn_k.weight"].data, llama_cpp_permute(hf_state[
        "model.layers.1.self_attn.k_proj.weight"], 2))
    assert np.array_equal(data["blk.1.attn_v.weight"].data, hf_state["model.layers.1.self_attn.v_proj.weight"])
    assert np.array_equal(data["output.weight"].data, hf_state["lm_head.weight"])


def test_chat_template_renders_our_prompt(tiny_spm):
    """Rendered by jinja2 as llama-cpp-python does, tokenised as llama.cpp does (specials parsed, a space put
    before the text after each special token), the template gives our chat prompt's ids."""
    jinja2_sandbox = pytest.importorskip("jinja2.sandbox")

    tokenizer = SentencePieceTokenizer(tiny_spm)
    messages = [{"role": "system", "content": "the model"}, {"role": "user", "content": "train the model"},
                {"role": "assistant", "content": "data and 模型 训练"}, {"role": "user", "content": "中文 文本 loss"},
                {"role": "assistant", "content": ""}, {"role": "user", "content": " model  loss"}]

    def raise_exception(message):
        raise ValueError(message)

    env = jinja2_sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(ALPACA.chat(" "))
    text = template.render(messages=messages, bos_token="<s>", eos_token="</s>", raise_exception=raise_exception)
    ids = []
    for part in text.replace("</s>", "\x00</s>\x00").replace("<s>", "\x00<s>\x00").split("\x00"):
        if part in ("<s>", "</s>"):
            ids.append(tokenizer.sp.piece_to_id(part))
        elif part:
            ids += tokenizer.sp.encode(part)  # SentencePiece's dummy prefix: llama.cpp's space after a special
    history = [("train the model", "data and 模型 训练"), ("中文 文本 loss", "")]
    want = chat_prompt(tokenizer, "alpaca", history, " model  loss", 10_000, system="the model")
    assert ids == want
    with pytest.raises(ValueError, match="unexpected role assistant"):
        template.render(messages=messages[:1] + messages[2:], bos_token="<s>", eos_token="</s>",
                        raise_exception=raise_exception)


def test_writes_one_tensor_at_a_time(tmp_path, tiny_spm):
    """Peak memory while writing stays near one tensor (here 16 of 1 MiB), nothing kept between tensors."""
    config = tiny_config("mha", 4096).replace(layers_num=2, feedforward_size=4096)
    loads = []

    def lazy(name, shape):
        def load():
            loads.append(name)
            return torch.from_numpy(np.random.default_rng(len(loads)).standard_normal(shape, dtype=np.float32))
        return LazyTensor(shape, load)

    from tencentpretrain.model import build_model

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(config, 4096).state_dict().items()}
    tensors = {k: lazy(k, s) for k, s in shapes.items()}
    vocab = Vocabulary(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(4093)], [0.0] * 4096, [2, 3, 3] + [1] * 4093,
                       {"unk": 0, "bos": 1, "eos": 2}, True)
    tracemalloc.start()
    write_gguf(tmp_path / "big.gguf", config, tensors, vocab, "q8_0")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    biggest = max(np.prod(s) * 4 for s in shapes.values())
    total = sum(np.prod(s) * 4 for s in shapes.values())
    assert sorted(loads) == sorted(shapes) and total > 8 * biggest
    assert peak < 3 * biggest, f"peak {peak / 2**20:.1f} MiB for tensors of {biggest / 2**20:.1f} MiB"


def test_bad_input_is_reported_and_nothing_written(tmp_path, tiny_spm, capsys):
    from tencentpretrain.cli import run_cli

    main = script("convert_llama_from_tencentpretrain_to_gguf")
    config = tiny_config("mha", 300)  # more pieces (400) than rows
    model, cfg = write_checkpoint(tmp_path / "m", config, random_state(config, 300))
    out = tmp_path / "out.gguf"
    base = ["--input_model_path", str(model), "--config_path", str(cfg), "--output_model_path", str(out)]
    assert run_cli(main, base + ["--spm_model_path", str(tiny_spm)]) == 1
    assert "400 pieces but the model's word embedding has only 300 rows" in capsys.readouterr().err
    assert run_cli(main, base + ["--spm_model_path", str(cfg)]) == 1
    assert "not a SentencePiece model" in capsys.readouterr().err
    assert run_cli(main, base[:2] + base[4:] + ["--spm_model_path", str(tiny_spm)]) == 1
    assert "needs --config_path" in capsys.readouterr().err
    gpt = tmp_path / "gpt.json"
    gpt.write_text(cfg.read_text().replace('"rms"', '"normal"'))
    assert run_cli(main, base[:2] + ["--config_path", str(gpt)] + base[4:] + ["--spm_model_path", str(tiny_spm)]) == 1
    assert "not a LLaMA architecture" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".out.gguf*"))


@pytest.mark.parametrize("shape", ["gqa", "mha-tied"])
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_round_trip_back_to_ours_is_exact(tmp_path, tiny_spm, shape, outtype):
    config, state, path = export(tmp_path, tiny_spm, shape, outtype)
    back = script("convert_llama_from_gguf_to_tencentpretrain")
    assert back(["--input_model_path", str(path), "--output_model_path", str(tmp_path / "back.bin"),
                 "--output_config_path", str(tmp_path / "back.json")]) == 0
    assert ModelConfig.from_json(tmp_path / "back.json") == config.replace(max_seq_length=256)
    restored = load_state_dict(tmp_path / "back.bin")
    assert restored.keys() == state.keys()
    for name, tensor in state.items():  # norms are f32 in every GGUF
        assert torch.equal(restored[name], tensor.to(torch.float16 if outtype == "f16" and tensor.dim() == 2
                                                     else torch.float32))
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert load_model(tmp_path / "back.json", tmp_path / "back.bin", dtype=torch.float32)(ids).shape[-1] == VOCAB


def test_extended_vocabulary_is_exported_in_order(tmp_path, tiny_spm):
    from tencentpretrain.tokenizers.train import train_sentencepiece

    corpus = tmp_path / "zh.txt"
    lines = ["今天天气很好 我们去公园散步", "机器学习 深度学习 自然语言处理"] * 50
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    extra = train_sentencepiece(corpus, tmp_path / "zh", vocab_size=300)
    merged = merge_tokenizers(tiny_spm, extra, tmp_path / "merged.model")
    size = SentencePieceTokenizer(merged).vocab_size
    assert size > 400
    vocab = read_vocabulary(merged, size)
    assert vocab.tokens[:400] == read_vocabulary(tiny_spm, 400).tokens
    assert vocab.scores[400:] == [0.0] * (size - 400) and set(vocab.types[400:]) == {1}


def test_tokenizer_back_from_gguf_encodes_as_the_original(tmp_path, tiny_spm):
    import sentencepiece

    from tencentpretrain.tokenizers.train import train_sentencepiece

    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(["今天天气很好 我们去公园散步", "机器学习 深度学习 自然语言处理"] * 50) + "\n",
                      encoding="utf-8")
    merged = merge_tokenizers(tiny_spm, train_sentencepiece(corpus, tmp_path / "zh", vocab_size=300),
                              tmp_path / "merged.model")
    rows = SentencePieceTokenizer(merged).vocab_size + 5
    config = tiny_config("mha", rows)
    model, cfg = write_checkpoint(tmp_path / "m", config, random_state(config, rows))
    path = to_gguf(model, cfg, merged, tmp_path / "m.gguf", "f32")
    back = script("convert_llama_from_gguf_to_tencentpretrain")
    assert back(["--input_model_path", str(path), "--output_model_path", str(tmp_path / "back.bin"),
                 "--output_spm_model_path", str(tmp_path / "back.model")]) == 0
    original = sentencepiece.SentencePieceProcessor(model_file=str(merged))
    rebuilt = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "back.model"))
    assert rebuilt.get_piece_size() == original.get_piece_size()
    assert [rebuilt.id_to_piece(i) for i in range(rebuilt.get_piece_size())] == [
        original.id_to_piece(i) for i in range(original.get_piece_size())]
    texts = ["the model reads 机器学习 and 今天天气很好", "  spaced\nlines 123 🦙", "中文 文本 训练"]
    assert [rebuilt.encode(t) for t in texts] == [original.encode(t) for t in texts]
    assert (rebuilt.bos_id(), rebuilt.eos_id(), rebuilt.unk_id(), rebuilt.pad_id()) == (
        original.bos_id(), original.eos_id(), original.unk_id(), original.pad_id())
