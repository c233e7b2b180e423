"""BERT from our parts against transformers: tiny random models built locally, logits compared on padded batches of
sentence pairs, conversions both ways bit-exact, the traps (post-norm by default, eps 1e-12 in every norm, token
types 0/1 as segments 1/2, padding row of the segment embedding) each pinned."""

import json
from pathlib import Path

import pytest
import torch
from train_support import load_script
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from tencentpretrain import load_model, load_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.convert import ConversionError
from tencentpretrain.convert.bert import config_from_hf, hf_to_ours, ours_to_hf
from tencentpretrain.model import build_model
from tencentpretrain.targets import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 97


bert_to_ours = load_script("convert_bert_from_huggingface_to_tencentpretrain", "scripts").main
bert_to_hf = load_script("convert_bert_from_tencentpretrain_to_huggingface", "scripts").main


def tiny_bert(cls=BertForPreTraining, seed=0, act="gelu", tied=True):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=80, max_position_embeddings=64, hidden_act=act, initializer_range=0.2,
                        tie_word_embeddings=tied)
    model = cls(config).eval()
    with torch.no_grad():  # random norms and biases, so that a gamma/beta or bias mix-up shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
        model.cls.predictions.bias.copy_(model.cls.predictions.decoder.bias)  # one tensor, or two equal ones
    return model


def pairs_batch():
    """Two rows of [CLS] A [SEP] B [SEP], the second padded: ids, HF attention mask and token types, our seg."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, VOCAB, (2, 21), generator=generator)
    mask = torch.ones(2, 21, dtype=torch.long)
    mask[1, 14:] = 0
    types = torch.zeros(2, 21, dtype=torch.long)
    types[0, 9:] = 1
    types[1, 6:14] = 1
    ids[1, 14:] = 0
    seg = torch.where(mask.bool(), types + 1, 0)  # Hugging Face token types 0/1 are segments 1/2, padding 0
    return ids, mask, types, seg


def converted(hf):
    state = {name: t for name, t in hf.state_dict().items()}
    config = config_from_hf(hf.config.to_dict() | {"architectures": [type(hf).__name__]})
    model = build_model(config, VOCAB)
    model.load_state_dict(hf_to_ours(state.items(), config), strict=True)
    return model.eval(), config


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM])
@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_logits_equal_transformers_on_padded_pairs(cls, act):
    hf = tiny_bert(cls, act=act)
    ours, config = converted(hf)
    assert config.layernorm_positioning == "post" and config.layernorm_eps == 1e-12
    ids, mask, types, seg = pairs_batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = ours.encode(ids, seg=seg)
        mlm = ours.target["mlm"].logits(hidden)
    logits = theirs.prediction_logits if cls is BertForPreTraining else theirs.logits
    real = mask.bool()
    assert (mlm - logits)[real].abs().max() < 1e-4
    if cls is BertForPreTraining:
        nsp = ours.target["sp"].logits(hidden)
        assert (nsp - theirs.seq_relationship_logits).abs().max() < 1e-4
    with torch.no_grad():  # model(src, seg=...) gives the mlm logits
        assert torch.equal(ours(ids, seg=seg), mlm)


def test_loss_sums_mlm_and_sp_as_transformers():
    hf = tiny_bert()
    ours, _ = converted(hf)
    ids, mask, types, seg = pairs_batch()
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3], labels[0, 12], labels[1, 2], labels[1, 8] = 11, 12, 13, 14
    nsp = torch.tensor([0, 1])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
        loss, metrics = ours.loss({"src": ids, "seg": seg, "tgt_mlm": labels, "tgt_sp": nsp})
    torch.testing.assert_close(loss, theirs.loss, rtol=1e-5, atol=1e-5)
    assert int(metrics["mlm.tokens"]) == 4 and int(metrics["sp.tokens"]) == 2
    assert 0 <= int(metrics["mlm.correct"]) <= 4 and set(metrics) >= {"loss", "tokens", "sp.loss", "sp.correct"}
    with pytest.raises(ConfigError, match="no tgt_sp"):
        ours.loss({"src": ids, "seg": seg, "tgt_mlm": labels})


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM])
def test_scripts_round_trip_bit_exact(tmp_path, cls):
    hf = tiny_bert(cls, tied=cls is BertForPreTraining)
    hf.save_pretrained(tmp_path / "hf")
    assert run_cli(bert_to_ours, ["--input_model_path", str(tmp_path / "hf"), "--output_model_path",
                                  str(tmp_path / "bert.bin"), "--output_config_path", str(tmp_path / "c.json")]) == 0
    state = load_state_dict(tmp_path / "bert.bin")
    assert state["embedding.seg.embedding.weight"].shape == (3, 48)
    assert not state["embedding.seg.embedding.weight"][0].any()  # the padding row
    ours = load_model(tmp_path / "c.json", tmp_path / "bert.bin")
    ids, mask, types, seg = pairs_batch()
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        logits = logits.prediction_logits if cls is BertForPreTraining else logits.logits
        assert (ours(ids, seg=seg) - logits)[mask.bool()].abs().max() < 1e-4
    assert run_cli(bert_to_hf, ["--input_model_path", str(tmp_path / "bert.bin"), "--config_path",
                                str(tmp_path / "c.json"), "--output_model_path", str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == [cls.__name__]
    back = cls.from_pretrained(tmp_path / "back").eval()
    original = hf.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_tencentpretrain_bert_config_without_positioning_builds_post_norm():
    """TencentPretrain's models/bert/base_config.json says nothing of layernorm_positioning or layernorm_eps: our
    defaults are its defaults (post-norm, 1e-6), so the same file builds the same model."""
    tencentpretrain_base = {"emb_size": 768, "feedforward_size": 3072, "hidden_size": 768, "hidden_act": "gelu",
                            "heads_num": 12, "layers_num": 12, "max_seq_length": 512, "dropout": 0.1,
                            "embedding": ["word", "pos", "seg"], "encoder": "transformer", "mask": "fully_visible",
                            "target": ["mlm", "sp"], "tie_weights": True}
    config = ModelConfig.from_dict(tencentpretrain_base)
    assert config.layernorm_positioning == "post" and config.layernorm_eps == 1e-6
    with torch.device("meta"):
        model = build_model(config, 21128)
    names = set(model.state_dict())
    assert "encoder.layer_norm.gamma" not in names  # post-norm has no final norm
    assert {"embedding.seg.embedding.weight", "embedding.layer_norm.gamma", "target.mlm.linear_2.bias",
            "target.sp.linear_1.weight"} <= names
    assert model.target["mlm"].linear_2.weight is model.embedding.word.embedding.weight
    ours = ModelConfig.from_json(ROOT / "models" / "bert" / "base_config.json")
    assert ours.replace(layernorm_eps=1e-6, source=None) == config


def test_fully_visible_attention_sees_later_tokens_and_not_padding():
    model = converted(tiny_bert())[0]
    ids, _, _, seg = pairs_batch()
    with torch.no_grad():
        base = model.encode(ids, seg=seg)
        later = ids.clone()
        later[0, -1] = 7  # a change at the end reaches the first position (no causal mask)
        assert not torch.allclose(model.encode(later, seg=seg)[0, 0], base[0, 0])
        padded = ids.clone()
        padded[1, 15:] = 9  # a change under padding does not reach the real tokens
        assert torch.equal(model.encode(padded, seg=seg)[1, :14], base[1, :14])


@pytest.mark.parametrize("change, message", [
    ({"target": ["mlm", "mlm"]}, "target names a part twice"),
    ({"target": []}, "at least one target"),
    ({"target": ["lm"]}, "target lm .* needs mask: causal"),
    ({"target": ["sp"], "tie_weights": True}, "tie_weights: true needs a target with a vocabulary head"),
    ({"target": ["nsp"]}, "unknown target 'nsp'; known: lm, mlm, sp"),
    ({"embedding": ["word", "segment"]}, "unknown embedding 'segment'"),
])
def test_bad_bert_configs_are_refused_naming_the_key(change, message):
    data = json.loads((ROOT / "models" / "bert" / "tiny_config.json").read_text())
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**data, **change})


def test_hf_configs_we_cannot_build_are_refused():
    base = tiny_bert().config.to_dict()
    with pytest.raises(ConversionError, match="position_embedding_type 'relative_key'"):
        config_from_hf(base | {"position_embedding_type": "relative_key"})
    with pytest.raises(ConversionError, match="type_vocab_size 3"):
        config_from_hf(base | {"type_vocab_size": 3})
    with pytest.raises(ConversionError, match="BertForSequenceClassification"):
        config_from_hf(base | {"architectures": ["BertForSequenceClassification"]})


def test_ours_to_hf_drops_the_padding_row_and_refuses_strangers():
    hf = tiny_bert()
    ours, config = converted(hf)
    state = ours.state_dict()
    out = ours_to_hf(state, config)
    assert torch.equal(out["bert.embeddings.token_type_embeddings.weight"],
                       hf.state_dict()["bert.embeddings.token_type_embeddings.weight"])
    with pytest.raises(ConversionError, match="unexpected tensor encoder.extra.weight"):
        ours_to_hf({**state, "encoder.extra.weight": torch.zeros(1)}, config)


def test_generation_and_gguf_refuse_a_bert_model(tmp_path):
    from tencentpretrain.checkpoint import save_state_dict
    from tencentpretrain.convert.gguf import read_checkpoint
    from tencentpretrain.generation import Engine, load_generation_model

    model, config = converted(tiny_bert())
    with pytest.raises(ConfigError, match="generation needs a causal language model .*run_fill_mask"):
        Engine(model)
    config_path = tmp_path / "bert.json"
    config.save(config_path)
    save_state_dict(dict(model.state_dict()), tmp_path / "bert.bin")
    with pytest.raises(ConfigError, match="generation needs a causal language model"):
        load_generation_model(tmp_path / "bert.bin", config_path)
    with pytest.raises(ConfigError, match="the GGUF export .* needs a causal language model"):
        read_checkpoint(tmp_path / "bert.bin", config_path)


def test_fill_mask_equals_the_transformers_pipeline(tmp_path):
    from transformers import BertTokenizerFast, pipeline

    words = ["the", "cat", "dog", "sat", "on", "mat", "ran", "to", "a", "big", "small", "house", ".", ",", "##s"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (tmp_path / "vocab.txt").write_text("\n".join(specials + words + [f"w{i}" for i in range(VOCAB - 20)]) + "\n")
    hf = tiny_bert(BertForMaskedLM)
    hf.save_pretrained(tmp_path / "hf")
    BertTokenizerFast(vocab=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "hf")  # vocab=: transformers 5
    assert run_cli(bert_to_ours, ["--input_model_path", str(tmp_path / "hf"), "--output_model_path",
                                  str(tmp_path / "bert.bin"), "--output_config_path", str(tmp_path / "c.json")]) == 0
    texts = ["the cat sat on the [MASK].", "a [MASK] dog ran to the big [MASK] ."]
    (tmp_path / "cloze.txt").write_text("\n".join(texts) + "\n")
    fill = load_script("run_fill_mask", "inference").main
    assert run_cli(fill, ["--load_model_path", str(tmp_path / "bert.bin"), "--config_path", str(tmp_path / "c.json"),
                          "--tokenizer_path", str(tmp_path / "hf"), "--test_path", str(tmp_path / "cloze.txt"),
                          "--prediction_path", str(tmp_path / "out.jsonl"), "--topk", "5"]) == 0
    ours = [json.loads(line)["masks"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    theirs = pipeline("fill-mask", model=str(tmp_path / "hf"), tokenizer=str(tmp_path / "hf"), top_k=5)
    for text, masks in zip(texts, ours):
        expected = theirs(text)
        expected = [expected] if isinstance(expected[0], dict) else expected  # one mask: a flat list
        assert len(masks) == len(expected)
        for mine, reference in zip(masks, expected):
            assert [m["token_id"] for m in mine] == [r["token"] for r in reference]
            assert [m["score"] for m in mine] == pytest.approx([r["score"] for r in reference], abs=1e-5)



@pytest.mark.parametrize("cased", [False, True])
def test_export_with_vocab_path_ships_the_tokenizer_transformers_reads_as_ours(tmp_path, cased):
    from transformers import AutoTokenizer, pipeline

    from tencentpretrain.tokenizers.wordpiece import WordPieceTokenizer

    words = ["the", "cat", "dog", "sat", "on", "mat", "café", "数", "据", ".", ",", "##s", "##é"]
    words += ["The", "Cat", "Café"] if cased else ["big", "small", "house"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + words + [f"w{i}" for i in range(VOCAB - len(specials) - len(words))]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    hf = tiny_bert(BertForMaskedLM)
    hf.save_pretrained(tmp_path / "hf")
    assert run_cli(bert_to_ours, ["--input_model_path", str(tmp_path / "hf"), "--output_model_path",
                                  str(tmp_path / "bert.bin"), "--output_config_path", str(tmp_path / "c.json")]) == 0
    assert run_cli(bert_to_hf, ["--input_model_path", str(tmp_path / "bert.bin"), "--config_path",
                                str(tmp_path / "c.json"), "--vocab_path", str(tmp_path / "vocab.txt"),
                                "--output_model_path", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "vocab.txt").read_bytes() == (tmp_path / "vocab.txt").read_bytes()
    ours = WordPieceTokenizer(tmp_path / "vocab.txt")
    assert ours.lowercase is not cased  # capitals in the vocabulary: cased, and the export says so
    theirs = AutoTokenizer.from_pretrained(tmp_path / "back")
    assert json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())["do_lower_case"] is not cased
    for text in ["The cat sat on the mat.", "THE Café, the café 数据 dogs", "Cat [MASK] the mat [SEP] zzz"]:
        assert theirs(text)["input_ids"] == [ours.cls_id, *ours.encode(text), ours.sep_id], text
    fill = pipeline("fill-mask", model=str(tmp_path / "back"), top_k=3)  # the directory alone: model and tokenizer
    assert len(fill("the cat sat on the [MASK].")) == 3


def test_export_refuses_a_vocab_path_that_does_not_fit_and_writes_nothing(tmp_path, capsys):
    hf = tiny_bert(BertForMaskedLM)
    hf.save_pretrained(tmp_path / "hf")
    assert run_cli(bert_to_ours, ["--input_model_path", str(tmp_path / "hf"), "--output_model_path",
                                  str(tmp_path / "bert.bin"), "--output_config_path", str(tmp_path / "c.json")]) == 0
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    assert run_cli(bert_to_hf, ["--input_model_path", str(tmp_path / "bert.bin"), "--config_path",
                                str(tmp_path / "c.json"), "--vocab_path", str(tmp_path / "vocab.txt"),
                                "--output_model_path", str(tmp_path / "back")]) != 0
    assert "vocab.txt has 7 pieces but embedding.word.embedding.weight has 97 rows" in capsys.readouterr().err
    assert not (tmp_path / "back").exists()
