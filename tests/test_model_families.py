"""Llama-3.x, Qwen2/2.5, Qwen3 and Mistral against transformers: tiny random models built from transformers' own
config classes, converted with the LLaMA scripts; logits to 1e-4, HF -> ours -> HF bit-exact, greedy generation
equal to transformers' ``generate``; what we do not implement refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from test_convert import hf_to_ours, ours_to_hf
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tencentpretrain import load_model, load_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.generation import Engine

VOCAB = 151
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=2, max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1)
ROPE = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}


def build(family: str, seed: int = 0):
    """A tiny random transformers model of ``family``."""
    torch.manual_seed(seed)
    if family.startswith("llama3"):  # Llama-3.x: rope_theta 500000 and a rope type
        kind = family.split("-")[1] if family.count("-") and not family.endswith("tied") else "llama3"
        config = LlamaConfig(**COMMON, rope_parameters={"rope_theta": 500000.0, **ROPE[kind]},
                             tie_word_embeddings=family.endswith("tied"))
        return LlamaForCausalLM(config).eval()
    if family.startswith("qwen2"):
        config = Qwen2Config(**COMMON, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                             tie_word_embeddings=family == "qwen2-tied")
        return Qwen2ForCausalLM(config).eval()
    if family == "qwen3":  # head_dim 24: not hidden / heads (16)
        config = Qwen3Config(**COMMON, head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                             tie_word_embeddings=True)
        return Qwen3ForCausalLM(config).eval()
    if family == "mistral":  # a window shorter than the test sequences
        config = MistralConfig(**COMMON, sliding_window=7, head_dim=16)
        return MistralForCausalLM(config).eval()
    raise ValueError(family)


FAMILIES = ["llama3", "llama3-linear", "llama3-dynamic", "llama3-yarn", "llama3-tied", "qwen2", "qwen2-tied",
            "qwen3", "mistral"]


def with_random_biases_and_norms(model) -> None:
    """transformers initialises biases to 0 and norms to 1: randomise them so a misplaced one shows."""
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                tensor.add_(torch.randn_like(tensor) * 0.2)


def converted(tmp_path, family):
    hf = build(family)
    with_random_biases_and_norms(hf)
    hf.save_pretrained(tmp_path / "hf")
    out, cfg = tmp_path / "ours.bin", tmp_path / "ours.json"
    assert hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(out),
                       "--output_config_path", str(cfg)]) == 0
    return hf, out, cfg


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(tmp_path, family):
    hf, out, cfg = converted(tmp_path, family)
    ours = load_model(cfg, out).eval()
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = hf(ids).logits, ours(ids)
    assert (theirs - mine).abs().max().item() <= 1e-4 * max(1.0, theirs.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_exact(tmp_path, family):
    hf, out, cfg = converted(tmp_path, family)
    assert ours_to_hf(["--input_model_path", str(out), "--config_path", str(cfg),
                       "--output_model_path", str(tmp_path / "back")]) == 0
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported["architectures"] == hf.config.architectures
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(reloaded) is type(hf)
    original, back = hf.state_dict(), reloaded.state_dict()
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    hf_to_ours(["--input_model_path", str(tmp_path / "back"), "--output_model_path", str(tmp_path / "again.bin")])
    a, b = load_state_dict(out), load_state_dict(tmp_path / "again.bin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
def test_greedy_generation_equals_transformers_generate(tmp_path, family):
    hf, out, cfg = converted(tmp_path, family)
    ours = load_model(cfg, out).eval()
    prompt = torch.randint(0, VOCAB, (11,), generator=torch.Generator().manual_seed(3)).tolist()
    want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                       do_sample=False, max_new_tokens=24, min_new_tokens=24, pad_token_id=0,
                       eos_token_id=None)[0, len(prompt):].tolist()
    assert Engine(ours).generate([prompt], 24)[0] == want


def test_config_keys_are_checked_by_name(tmp_path):
    base = json.loads(json.dumps(ModelConfig.from_json("models/llama/tiny_config.json").to_dict()))
    for bad, message in [
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope"),
        ({"rope_scaling": {"rope_type": "linear"}}, "needs factor"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "typo": 1}}, "typo"),
        ({"qkv_bias": True, "remove_transformer_bias": False}, "qkv_bias"),
        ({"attention_head_size": 0}, "attention_head_size"),
    ]:
        path = tmp_path / "c.json"
        path.write_text(json.dumps({**base, **bad}))
        with pytest.raises(ConfigError, match=message):
            ModelConfig.from_json(path)


def test_unsupported_hf_architecture_and_rope_type_are_refused_by_name(tmp_path, capsys):
    hf = build("llama3")
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, message in [({"architectures": ["GemmaForCausalLM"]}, "GemmaForCausalLM"),
                            ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "longrope")]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **change}))
        argv = ["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(tmp_path / "o.bin")]
        assert run_cli(hf_to_ours, argv) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "o.bin").exists()


PUBLISHED = {  # parameters (billions) of the released checkpoints, embeddings counted once where tied
    "llama3/8b": 8.03, "llama3/70b": 70.55, "llama3.2/1b": 1.24, "llama3.2/3b": 3.21, "qwen2.5/0.5b": 0.49,
    "qwen2.5/1.5b": 1.54, "qwen2.5/7b": 7.62, "qwen3/0.6b": 0.60, "qwen3/8b": 8.19, "mistral/7b": 7.24,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_zoo_configs_load_strictly_and_have_the_published_size(name):
    from tencentpretrain.model import build_model

    config = ModelConfig.from_json(f"models/{name}_config.json")
    with torch.device("meta"):
        model = build_model(config, config.vocab_size)
    params = sum(p.numel() for p in model.parameters()) / 1e9  # tied tensors are one parameter
    assert abs(params - PUBLISHED[name]) <= 0.01 * PUBLISHED[name], f"{name}: {params:.3f}B"
    tiny = ModelConfig.from_json(f"models/{name.split('/')[0]}/tiny_config.json")
    assert (tiny.qkv_bias, tiny.qk_norm, tiny.sliding_window is None, tiny.rope_scaling is None) == \
        (config.qkv_bias, config.qk_norm, config.sliding_window is None, config.rope_scaling is None)


def test_dynamic_rope_past_the_original_context_equals_transformers(tmp_path):
    """Dynamic NTK scaling only changes anything past the original context: a model trained on 32 positions read
    at 80, where transformers grows the base with the sequence length, as we do."""
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**{**COMMON, "max_position_embeddings": 32},
                                      rope_parameters={"rope_theta": 10000.0, **ROPE["dynamic"]})).eval()
    hf.save_pretrained(tmp_path / "hf")
    out, cfg = tmp_path / "ours.bin", tmp_path / "ours.json"
    assert hf_to_ours(["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(out),
                       "--output_config_path", str(cfg)]) == 0
    config = ModelConfig.from_json(cfg)
    assert config.rope_scaling.original_max_position_embeddings == 32
    config.replace(max_seq_length=128).save(cfg)  # read past the original context
    ours = load_model(cfg, out).eval()
    for length in (24, 80):  # inside (unchanged frequencies) and past the original context
        ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            theirs, mine = hf(ids).logits, ours(ids)
        assert (theirs - mine).abs().max().item() <= 1e-4 * max(1.0, theirs.abs().max().item()), length
