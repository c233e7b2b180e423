"""The encoder-decoder model: its config keys and their rules, the loss a seq2seq batch trains, the KV-cached
decoding against the full pass, and the refusals of the parts that need a causal language model."""

import json
from pathlib import Path

import pytest
import torch

from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.model import build_model
from tencentpretrain.targets import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]
ZOO = ["t5/tiny_config.json", "t5-v1_1/tiny_config.json", "bart/tiny_config.json"]
T5 = json.loads((ROOT / "models" / "t5" / "tiny_config.json").read_text())


def model_of(zoo: str, **overrides):
    torch.manual_seed(0)
    config = ModelConfig.from_json(ROOT / "models" / zoo, dropout=0.0, **overrides)
    return build_model(config, 60).eval()


def seq2seq_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 60, (2, 12), generator=generator)
    seg = torch.ones_like(src)
    seg[1, 8:] = 0
    tgt = torch.randint(3, 60, (2, 7), generator=generator)
    tgt_in = torch.cat([torch.zeros(2, 1, dtype=torch.long), tgt[:, :-1]], 1)  # shifted right after a start token
    tgt_seg = torch.ones_like(tgt)
    tgt_seg[0, 5:] = 0
    return {"src": src, "seg": seg, "tgt_in": tgt_in, "tgt_seg": tgt_seg,
            "tgt": tgt.masked_fill(tgt_seg == 0, IGNORE_INDEX)}


@pytest.mark.parametrize("zoo", ZOO)
def test_loss_trains_every_parameter_and_ignores_padding(zoo):
    model = model_of(zoo).train()
    batch = seq2seq_batch()
    loss, metrics = model.loss(batch)
    assert metrics["tokens"] == 12 and torch.isfinite(loss)
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    changed = dict(batch, tgt_in=batch["tgt_in"].clone(), src=batch["src"].clone())
    changed["tgt_in"][0, 6], changed["src"][1, 10] = 9, 9  # only at padding
    model.eval()
    assert torch.allclose(model.loss(changed)[0], model.loss(batch)[0], atol=1e-6)


@pytest.mark.parametrize("zoo", ZOO)
def test_cached_decoding_equals_the_full_pass(zoo):
    model = model_of(zoo)
    batch = seq2seq_batch()
    with torch.no_grad():
        memory = model.encode_memory(batch["src"], batch["seg"])
        full = model.decode(batch["tgt_in"], memory)
        cache = model.decoder_cache(2, 7)
        steps = [model.decode(batch["tgt_in"][:, :3], memory, cache)]
        steps += [model.decode(batch["tgt_in"][:, i:i + 1], memory, cache) for i in range(3, 7)]
    assert cache.length == 7
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_encoder_decoders_are_not_causal_and_generation_refuses_them():
    from tencentpretrain.generation.engine import Engine

    model = model_of("t5/tiny_config.json")
    assert not model.config.causal and model.config.encoder_decoder
    with pytest.raises(ConfigError, match="generation needs a causal language model.*inference/run_seq2seq.py"):
        Engine(model)
    with pytest.raises(ConfigError, match="is an encoder-decoder: call model.decode"):
        model(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="no tgt_in"):
        model.loss({"src": torch.zeros(1, 3, dtype=torch.long), "tgt": torch.zeros(1, 3, dtype=torch.long)})


def test_the_server_loader_and_the_gguf_export_refuse_encoder_decoders(tmp_path, tiny_spm):
    from train_support import load_script

    from tencentpretrain.checkpoint import save_state_dict
    from tencentpretrain.generation.loading import load_generation_model

    config_path = ROOT / "models" / "bart" / "tiny_config.json"
    model = build_model(ModelConfig.from_json(config_path), 400)  # tiny_spm's pieces
    save_state_dict(dict(model.state_dict()), tmp_path / "bart.bin")
    with pytest.raises(ConfigError, match="generation needs a causal language model"):
        load_generation_model(tmp_path / "bart.bin", config_path)
    to_gguf = load_script("convert_llama_from_tencentpretrain_to_gguf", "scripts").main
    with pytest.raises(ConfigError, match="the GGUF export \\(llama.cpp\\) needs a causal language model"):
        to_gguf(["--input_model_path", str(tmp_path / "bart.bin"), "--config_path", str(config_path),
                 "--spm_model_path", str(tiny_spm), "--output_model_path", str(tmp_path / "bart.gguf")])
    assert not (tmp_path / "bart.gguf").exists()


@pytest.mark.parametrize("change, message", [
    ({"tgt_embedding": None}, "decoder 'transformer' needs tgt_embedding"),
    ({"tgt_embedding": ["pos"]}, "needs tgt_embedding starting with 'word'"),
    ({"tgt_embedding": ["word", "word"]}, "tgt_embedding names a part twice"),
    ({"decoder": "lstm"}, "unknown decoder 'lstm'; known: transformer"),
    ({"decoder": None}, "tgt_embedding is set but decoder is null"),
    ({"decoder": None, "tgt_embedding": None, "decoder_layers_num": None}, "share_embedding: true needs a decoder"),
    ({"decoder_layers_num": 0}, "decoder_layers_num must be a positive integer"),
    ({"target": ["mlm"], "tie_weights": False, "tied_head_rescale": False}, "with target \\[\"lm\"\\]"),
    ({"mask": "causal"}, "mask: fully_visible"),
    ({"relative_attention_buckets_num": 2}, "relative_attention_buckets_num must be an integer of at least 4"),
    ({"rotary_position_embedding": True}, "relative_position_embedding and rotary_position_embedding exclude"),
    ({"relative_position_embedding": 1}, "relative_position_embedding must be true or false"),
    ({"tie_weights": False}, "tied_head_rescale: true needs tie_weights: true"),
    ({"tgt_embedding": ["word", "posx"]}, "unknown embedding 'posx'"),
    ({"tgt_embedding": 3}, "tgt_embedding must be a list of strings or null"),
])
def test_bad_encoder_decoder_configs_are_refused_naming_the_key(tmp_path, change, message):
    path = tmp_path / "t5.json"
    path.write_text(json.dumps({**T5, **change}))
    with pytest.raises(ConfigError, match=f"t5.json: .*{message}"):
        ModelConfig.from_json(path)


def test_unknown_keys_still_raise_and_tencentpretrain_t5_configs_load(tmp_path):
    path = tmp_path / "t5.json"
    path.write_text(json.dumps({**T5, "relative_attention_bucket_num": 32}))
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) 'relative_attention_bucket_num'"):
        ModelConfig.from_json(path)
    theirs = {key: value for key, value in T5.items() if key != "tied_head_rescale"}  # TencentPretrain's keys only
    path.write_text(json.dumps(theirs))
    config = ModelConfig.from_json(path)
    assert config.to_dict() | theirs == config.to_dict() and config.decoder_layers == 2


@pytest.mark.parametrize("zoo", ["t5-v1_1/tiny_config.json", "bart/tiny_config.json"])
def test_the_plain_engine_trains_an_encoder_decoder_from_a_batch_dict(zoo):
    from tencentpretrain.training.engine import DistInfo
    from tencentpretrain.training.optim import build_scheduler, param_groups
    from tencentpretrain.training.plain_engine import PlainEngine

    torch.manual_seed(0)
    config = ModelConfig.from_json(ROOT / "models" / zoo, dropout=0.0)
    model = build_model(config, 60, checkpoint_activations=True).train()  # the recomputing path too
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=3e-3)
    engine = PlainEngine(model, optimizer, build_scheduler(optimizer, "constant", 0, 30), DistInfo())
    batch = seq2seq_batch()
    losses = []
    for _ in range(30):
        loss, metrics = engine.forward(batch, boundary=True)
        engine.backward(loss)
        assert not engine.step().skipped
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert model.tgt_embedding.word is model.embedding.word  # still one embedding after the optimizer's steps


def test_vocabulary_checks_read_the_decoder_embedding_too():
    from tencentpretrain.vocab import VocabError, check_vocab, vocab_rows

    config = ModelConfig.from_json(ROOT / "models" / "bart" / "tiny_config.json", share_embedding=False)
    state = dict(build_model(config, 60).state_dict())
    rows = vocab_rows(state)
    assert rows["tgt_embedding.word.embedding.weight"] == 60
    check_vocab(60, "tok", rows, "bart.bin", config)
    state["tgt_embedding.word.embedding.weight"] = torch.zeros(64, 64)
    with pytest.raises(VocabError, match="tgt_embedding.word.embedding.weight has 64 rows"):
        check_vocab(60, "tok", vocab_rows(state), "bart.bin", config)


def test_a_tied_head_is_checked_against_the_decoder_embedding_it_is_tied_to():
    from tencentpretrain.checkpoint import CheckpointError, model_from_state

    config = ModelConfig.from_json(ROOT / "models" / "bart" / "tiny_config.json", share_embedding=False)
    state = {k: v.clone() for k, v in build_model(config, 60).state_dict().items()}
    state["target.lm.output_layer.weight"] = state["tgt_embedding.word.embedding.weight"]
    model = model_from_state(config, state)  # the encoder's embedding is another tensor: fine
    assert model.target["lm"].output_layer.weight is model.tgt_embedding.word.embedding.weight
    state["target.lm.output_layer.weight"] = state["embedding.word.embedding.weight"]
    with pytest.raises(CheckpointError, match="output_layer.weight differs from tgt_embedding.word.embedding.weight"):
        model_from_state(config, state)
