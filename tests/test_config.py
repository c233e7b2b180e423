import copy
import json
from pathlib import Path

import pytest
import torch

from tencentpretrain import ConfigError, ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted(p for p in (ROOT / "models").rglob("*.json")
                       if not p.name.startswith("deepspeed") and "special_tokens" not in p.name)

# The content of TencentPretrain's own models/llama2/70b_config.json and models/gpt2/config.json.
TENCENTPRETRAIN_LLAMA2_70B = {
    "emb_size": 8192, "feedforward_size": 28672, "hidden_size": 8192, "hidden_act": "silu", "heads_num": 64,
    "local_kv_heads_num": 8, "layers_num": 80, "dropout": 0.0, "data_processor": "lm", "max_seq_length": 2048,
    "embedding": ["word"], "remove_transformer_bias": True, "remove_embedding_layernorm": True,
    "rotary_position_embedding": True, "encoder": "transformer", "feed_forward": "gated", "mask": "causal",
    "layernorm_positioning": "pre", "layernorm": "rms", "target": ["lm"],
}
TENCENTPRETRAIN_GPT2 = {
    "emb_size": 768, "feedforward_size": 3072, "hidden_size": 768, "hidden_act": "gelu_fast", "heads_num": 12,
    "layers_num": 12, "max_seq_length": 1024, "dropout": 0.1, "data_processor": "lm", "embedding": ["word", "pos"],
    "remove_embedding_layernorm": True, "encoder": "transformer", "mask": "causal", "layernorm_positioning": "pre",
    "target": ["lm"], "tie_weights": True,
}


def shrink(config: ModelConfig) -> ModelConfig:
    heads = 4
    kv = None if config.local_kv_heads_num is None else 2
    head_size = None if config.attention_head_size is None else 16
    decoder_layers = None if config.decoder_layers_num is None else 3
    return config.replace(emb_size=32, hidden_size=32, feedforward_size=48, heads_num=heads, local_kv_heads_num=kv,
                          layers_num=2, max_seq_length=64, vocab_size=None, attention_head_size=head_size,
                          decoder_layers_num=decoder_layers)


def test_zoo_is_complete():
    names = {str(p.relative_to(ROOT / "models")) for p in MODEL_CONFIGS}
    for expected in ["gpt2/config.json", "gpt2/medium_config.json", "gpt2/large_config.json",
                     "gpt2/xlarge_config.json", "llama/7b_config.json", "llama/13b_config.json",
                     "llama/33b_config.json", "llama/65b_config.json", "llama2/7b_config.json",
                     "llama2/13b_config.json", "llama2/70b_config.json"]:
        assert expected in names
    assert ModelConfig.from_json(ROOT / "models/llama2/70b_config.json").kv_heads_num == 8
    for name in ["deepspeed_config.json", "deepspeed_zero3_config.json", "deepspeed_zero3_offload_config.json"]:
        assert "zero_optimization" in json.loads((ROOT / "models" / name).read_text())


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "models")))
def test_every_zoo_config_loads_and_a_shrunken_copy_runs(path):
    config = ModelConfig.from_json(path)
    model = build_model(shrink(config), vocab_size=50).eval()
    if config.encoder_decoder:  # T5, BART: the source encoded once, a target decoded against it
        logits = model.decode(torch.randint(0, 50, (2, 9)), model.encode_memory(torch.randint(0, 50, (2, 11))))
    else:
        logits = model(torch.randint(0, 50, (2, 9)))
    assert logits.shape == (2, 9, 50) and torch.isfinite(logits).all()


@pytest.mark.parametrize("data", [TENCENTPRETRAIN_LLAMA2_70B, TENCENTPRETRAIN_GPT2])
def test_tencentpretrain_configs_load_unchanged(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    config = ModelConfig.from_json(path)
    assert config.to_dict() | data == config.to_dict()  # every key kept its value


def test_unknown_key_is_named_with_the_valid_ones(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TENCENTPRETRAIN_GPT2, "heads_nun": 12}))
    with pytest.raises(ConfigError, match=r"bad.json: unknown config key\(s\) 'heads_nun'; valid keys: .*heads_num"):
        ModelConfig.from_json(path)


@pytest.mark.parametrize("change, message", [
    ({"heads_num": 7}, "hidden_size 768 is not divisible by heads_num 7"),
    ({"local_kv_heads_num": 5}, "not divisible by local_kv_heads_num 5"),
    ({"layernorm": "batch"}, "unknown layernorm 'batch'; known: normal, rms"),
    ({"feed_forward": "moe"}, "unknown feed_forward 'moe'; known: dense, gated"),
    ({"hidden_act": "swish"}, "unknown hidden_act 'swish'"),
    ({"embedding": ["pos"]}, "embedding must start with 'word'"),
    ({"mask": "diagonal"}, "unknown mask 'diagonal'"),
    ({"layers_num": 0}, "layers_num must be a positive integer"),
    ({"emb_size": 512}, "emb_size 512 must equal hidden_size 768"),
    ({"tie_weights": "yes"}, "tie_weights must be true or false"),
])
def test_cross_field_rules(change, message):
    data = copy.deepcopy(TENCENTPRETRAIN_GPT2) | change
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "emb_size": 768,\n  "heads_num": \n}')
    with pytest.raises(ConfigError, match=r"broken.json: invalid JSON at line 4"):
        ModelConfig.from_json(path)


def test_config_is_frozen_and_round_trips(tmp_path):
    config = ModelConfig.from_json(ROOT / "models/llama/7b_config.json")
    with pytest.raises(AttributeError):
        config.heads_num = 8
    config.save(tmp_path / "c.json")
    assert ModelConfig.from_json(tmp_path / "c.json") == config
    assert config.head_dim == 128 and config.kv_heads_num == 32
