"""Conversion against transformers: tiny random models built locally, logits compared, round trips bit-exact."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from tencentpretrain import CheckpointError, load_model, load_state_dict
from tencentpretrain.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


hf_to_ours = script("convert_llama_from_huggingface_to_tencentpretrain")
ours_to_hf = script("convert_llama_from_tencentpretrain_to_huggingface")
meta_to_ours = script("convert_llama_to_tencentpretrain")
gpt2_to_ours = script("convert_gpt2_from_huggingface_to_tencentpretrain")
gpt2_to_hf = script("convert_gpt2_from_tencentpretrain_to_huggingface")

LLAMA_SHAPES = {  # (hidden, heads, kv heads, layers, ffn, vocab, tied)
    "mha": (64, 4, 4, 2, 96, 101, False),
    "gqa": (64, 8, 2, 3, 80, 97, False),
    "mqa-tied": (48, 6, 1, 2, 64, 120, True),
}


def tiny_llama(hidden, heads, kv, layers, ffn, vocab, tied, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads,
                         num_key_value_heads=kv, num_hidden_layers=layers, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tied, initializer_range=0.1)
    return LlamaForCausalLM(config).eval()


def assert_same_logits(hf_model, ours, vocab, atol=1e-4):
    ids = torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf_model(ids).logits - ours(ids)).abs().max().item()
    assert diff <= atol, f"max abs logit difference {diff}"


@pytest.mark.parametrize("shape", LLAMA_SHAPES, ids=str)
@pytest.mark.parametrize("storage", ["safetensors", "sharded-safetensors", "bin", "sharded-bin"])
def test_llama_from_huggingface_matches_logits(tmp_path, shape, storage):
    hf = tiny_llama(*LLAMA_SHAPES[shape])
    hf.save_pretrained(tmp_path / "hf", safe_serialization="safetensors" in storage,
                       max_shard_size="20KB" if "sharded" in storage else "5GB")
    if "sharded" in storage:
        assert len(list((tmp_path / "hf").glob("*.index.json"))) == 1
    out, cfg = tmp_path / "ours.bin", tmp_path / "ours.json"
    assert hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(out),
                       "--output_config_path", str(cfg), "--type", "7B"]) == 0
    assert_same_logits(hf, load_model(cfg, out), hf.config.vocab_size)


@pytest.mark.parametrize("shape", LLAMA_SHAPES, ids=str)
def test_llama_round_trip_is_bit_exact(tmp_path, shape):
    hf = tiny_llama(*LLAMA_SHAPES[shape])
    hf.save_pretrained(tmp_path / "hf")
    first, cfg = tmp_path / "first.bin", tmp_path / "cfg.json"
    hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(first),
                "--output_config_path", str(cfg)])
    assert ours_to_hf(["--input_model_path", str(first), "--config_path", str(cfg),
                       "--output_model_path", str(tmp_path / "back"), "--max_shard_size", "30KB"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    original, exported = hf.state_dict(), reloaded.state_dict()
    assert original.keys() == exported.keys() and all(torch.equal(original[k], exported[k]) for k in original)
    assert_same_logits(reloaded, load_model(cfg, first), hf.config.vocab_size)
    hf_to_ours(["--input_model_path", str(tmp_path / "back"), "--output_model_path", str(tmp_path / "second.bin")])
    a, b = load_state_dict(first), load_state_dict(tmp_path / "second.bin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    generation = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
def test_huggingface_export_ships_a_working_tokenizer(tmp_path):
    import sentencepiece
    from transformers import AutoTokenizer

    hf = tiny_llama(32, 4, 4, 1, 48, 32000, False)
    hf.save_pretrained(tmp_path / "hf")
    hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(tmp_path / "m.bin"),
                "--output_config_path", str(tmp_path / "c.json")])
    spm = SHARED / "tokenizers" / "llama_tokenizer.model"
    ours_to_hf(["--input_model_path", str(tmp_path / "m.bin"), "--config_path", str(tmp_path / "c.json"),
                "--output_model_path", str(tmp_path / "out"), "--spm_model_path", str(spm)])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "Hello world, 你好世界"
    expected = [1] + sentencepiece.SentencePieceProcessor(model_file=str(spm)).encode(text)
    assert tokenizer(text)["input_ids"] == expected


def hf_to_meta_names(hf_state, heads, kv_heads):
    """Meta's names and rotary layout, written independently of the converter's key map."""
    def unpermute(w, n):  # transformers' halves -> Meta's interleaved pairs
        rows, cols = w.shape
        return w.view(n, 2, rows // n // 2, cols).transpose(1, 2).reshape(rows, cols)

    meta = {"tok_embeddings.weight": hf_state["model.embed_tokens.weight"],
            "norm.weight": hf_state["model.norm.weight"], "output.weight": hf_state["lm_head.weight"],
            "rope.freqs": torch.zeros(4)}
    layers = 1 + max(int(k.split(".")[2]) for k in hf_state if k.startswith("model.layers."))
    for i in range(layers):
        p = f"model.layers.{i}."
        meta.update({
            f"layers.{i}.attention.wq.weight": unpermute(hf_state[p + "self_attn.q_proj.weight"], heads),
            f"layers.{i}.attention.wk.weight": unpermute(hf_state[p + "self_attn.k_proj.weight"], kv_heads),
            f"layers.{i}.attention.wv.weight": hf_state[p + "self_attn.v_proj.weight"],
            f"layers.{i}.attention.wo.weight": hf_state[p + "self_attn.o_proj.weight"],
            f"layers.{i}.feed_forward.w1.weight": hf_state[p + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": hf_state[p + "mlp.down_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": hf_state[p + "mlp.up_proj.weight"],
            f"layers.{i}.attention_norm.weight": hf_state[p + "input_layernorm.weight"],
            f"layers.{i}.ffn_norm.weight": hf_state[p + "post_attention_layernorm.weight"],
        })
    return meta


def split_for_model_parallel(meta, parts):
    """Split like Meta's model-parallel layers: column-parallel on dim 0, row-parallel and embedding on dim 1."""
    dim1 = ("tok_embeddings.weight", "attention.wo.weight", "feed_forward.w2.weight")
    dim0 = ("output.weight", "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
            "feed_forward.w1.weight", "feed_forward.w3.weight")
    shards = [{} for _ in range(parts)]
    for name, tensor in meta.items():
        dim = 1 if name.endswith(dim1) else 0 if name.endswith(dim0) else None
        for i in range(parts):
            shards[i][name] = tensor.clone() if dim is None else tensor.chunk(parts, dim)[i].clone()
    return shards


@pytest.mark.parametrize("files", [1, 2])
def test_meta_checkpoint_converts_to_the_same_logits(tmp_path, files):
    hidden, heads, kv, layers, ffn, vocab = 64, 4, 2, 2, 96, 90
    hf = tiny_llama(hidden, heads, kv, layers, ffn, vocab, False, seed=3)
    shards = split_for_model_parallel(hf_to_meta_names(hf.state_dict(), heads, kv), files)
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    for i, shard in enumerate(shards):
        torch.save(shard, meta_dir / f"consolidated.{i:02d}.pth")
    params = {"dim": hidden, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv, "vocab_size": -1,
              "multiple_of": 32, "norm_eps": 1e-5, "rope_theta": 5000.0}
    (meta_dir / "params.json").write_text(json.dumps(params))
    out, cfg = tmp_path / "ours.safetensors", tmp_path / "cfg.json"
    assert meta_to_ours(["--input_model_path", str(meta_dir / "consolidated.00.pth"), "--output_model_path",
                         str(out), "--output_config_path", str(cfg)]) == 0
    assert_same_logits(hf, load_model(cfg, out), vocab)


def tiny_gpt2(tied=True):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=111, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                      tie_word_embeddings=tied)).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_both_ways(tmp_path, tied):
    hf = tiny_gpt2(tied)
    hf.save_pretrained(tmp_path / "hf")
    out, cfg = tmp_path / "gpt2.bin", tmp_path / "gpt2.json"
    assert gpt2_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(out),
                         "--output_config_path", str(cfg)]) == 0
    ours = load_model(cfg, out)
    assert_same_logits(hf, ours, 111)
    assert gpt2_to_hf(["--input_model_path", str(out), "--config_path", str(cfg),
                       "--output_model_path", str(tmp_path / "back")]) == 0
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    theirs, mine = hf.state_dict(), back.state_dict()
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs if not k.endswith((".attn.bias", ".masked_bias")))


def test_config_that_does_not_fit_names_tensor_and_shapes(tmp_path, capsys):
    hf = tiny_llama(*LLAMA_SHAPES["mha"])
    hf.save_pretrained(tmp_path / "hf")
    hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(tmp_path / "m.bin")])
    wrong = ROOT / "models" / "llama" / "tiny_config.json"  # hidden 128, not 64
    with pytest.raises(CheckpointError, match=r"tensor embedding.word.embedding.weight: checkpoint has shape "
                                              r"\[101, 64\], the model config expects \[101, 128\]"):
        load_model(wrong, tmp_path / "m.bin")
    assert run_cli(ours_to_hf, ["--input_model_path", str(tmp_path / "m.bin"), "--config_path", str(wrong),
                                "--output_model_path", str(tmp_path / "out")]) == 1
    assert "checkpoint has shape [101, 64]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_failed_conversion_leaves_no_output(tmp_path, capsys):
    hf = tiny_llama(*LLAMA_SHAPES["mha"])
    hf.save_pretrained(tmp_path / "hf")
    state = load_state_dict(tmp_path / "hf" / "model.safetensors")
    state["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    out = tmp_path / "ours.bin"
    assert run_cli(hf_to_ours, ["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(out)]) == 1
    assert "unexpected tensor model.layers.0.mlp.extra_proj.weight" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "hf"]


def test_missing_weights_are_reported(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(tiny_llama(*LLAMA_SHAPES["mha"]).config.to_dict()))
    assert run_cli(hf_to_ours, ["--input_model_path", str(tmp_path / "hf"), "--output_model_path",
                                str(tmp_path / "o.bin")]) == 1
    assert "no model.safetensors, pytorch_model.bin" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("template", ["alpaca", "none"])
def test_huggingface_export_carries_the_chat_template_we_trained_with(tmp_path, template):
    """The exported tokenizer's apply_chat_template gives the ids the chat processor trained on."""
    from transformers import AutoTokenizer

    from tencentpretrain.data.chat import conversation_ids
    from tencentpretrain.data.chat_template import load_template
    from tencentpretrain.tokenizers import SentencePieceTokenizer

    hf = tiny_llama(32, 4, 4, 1, 48, 32000, False)
    hf.save_pretrained(tmp_path / "hf")
    hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(tmp_path / "m.bin"),
                "--output_config_path", str(tmp_path / "c.json")])
    spm = SHARED / "tokenizers" / "llama_tokenizer.model"
    ours_to_hf(["--input_model_path", str(tmp_path / "m.bin"), "--config_path", str(tmp_path / "c.json"),
                "--output_model_path", str(tmp_path / "out"), "--spm_model_path", str(spm),
                "--template", template])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hello, 你好"},
                {"role": "assistant", "content": "Hi! 你好。"}, {"role": "user", "content": "What is a model?"}]
    for upto, generation in ((3, False), (4, True)):
        ids = tokenizer.apply_chat_template(messages[:upto], tokenize=True, add_generation_prompt=generation)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        ours = conversation_ids(SentencePieceTokenizer(spm), load_template(template), messages[:upto], generation)
        assert ids == ours[0]
