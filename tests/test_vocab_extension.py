"""Vocabulary extension: merging tokenizers, growing checkpoints, and the agreement check of every command.

Tokenizers are trained here: an English base and a Chinese extra model, both LLaMA-like (BPE, byte fallback).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest
import sentencepiece
import torch
from sentencepiece import sentencepiece_model_pb2

from tencentpretrain.checkpoint import LM_HEAD, WORD_EMBEDDING, load_state_dict, save_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.vocab import extend_state
from tencentpretrain.model import build_model
from tencentpretrain.tokenizers.merge import merge_models
from tencentpretrain.tokenizers.train import train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
SHARED_ROOT = ROOT.parent / "shared"
SHARED = (SHARED_ROOT if SHARED_ROOT.exists() else Path(os.environ.get("TP_SHARED_DIR", "/nonexistent"))) / "data"
EN_WORDS = "the model reads tokens and learns to predict the next one from data train loss batch sample".split()
ZH_WORDS = ("数据 模型 训练 语言 中文 文本 指令 回答 问题 学习 北京 上海 天气 今天 明天 我们 你们 喜欢 读书 "
            "电脑 手机 朋友 老师 学生 学校 工作 时间 世界 国家 城市 大学 音乐 电影 公司 市场 经济 "
            "生活 活动 动物 物理 理解 解决 决定 定期 期间 间接").split()
ZH_TEXT = "今天北京的天气很好，我们喜欢在大学读书和学习中文。世界经济与市场 model 数据"
MICRO = {"mask": "causal", "layernorm_positioning": "pre", "target": ["lm"],
         "emb_size": 32, "hidden_size": 32, "feedforward_size": 88, "heads_num": 4, "layers_num": 2,
         "max_seq_length": 64, "embedding": ["word"], "remove_transformer_bias": True,
         "remove_embedding_layernorm": True, "rotary_position_embedding": True, "feed_forward": "gated",
         "layernorm": "rms", "hidden_act": "silu", "dropout": 0.0}


def script(name: str):
    """Import ``scripts/<name>.py`` or ``inference/<name>.py`` (or a top-level script) as a module."""
    path = next(p for p in (ROOT / "scripts" / f"{name}.py", ROOT / "inference" / f"{name}.py",
                            ROOT / f"{name}.py") if p.is_file())
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sentences(words: list[str], count: int, seed: int, sep: str) -> list[str]:
    rng = random.Random(seed)
    return [sep.join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(count)]


@pytest.fixture(scope="module")
def spms(tmp_path_factory) -> dict[str, Path]:
    """base (English), extra (Chinese), merged (ranked scores) and merged_zero (score 0) SentencePiece models."""
    folder = tmp_path_factory.mktemp("spm")
    (folder / "en.txt").write_text("\n".join(sentences(EN_WORDS, 400, 0, " ")) + "\n", encoding="utf-8")
    (folder / "zh.txt").write_text("\n".join(sentences(ZH_WORDS, 400, 1, "")) + "\n", encoding="utf-8")
    base = train_sentencepiece(folder / "en.txt", folder / "base", 300)
    extra = train_sentencepiece(folder / "zh.txt", folder / "extra", 380)
    merge_models(base, extra, folder / "merged.model")
    merge_models(base, extra, folder / "merged_zero.model", scores="zero")
    return {"base": base, "extra": extra, "merged": folder / "merged.model",
            "merged_zero": folder / "merged_zero.model", "corpus_zh": folder / "zh.txt"}


def proto(path: Path):
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    return model


def processor(path: Path):
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def write_config(folder: Path, **overrides) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({**MICRO, **overrides}), encoding="utf-8")
    return path


def base_checkpoint(folder: Path, spms, tied: bool = False, suffix: str = ".bin") -> tuple[Path, Path]:
    config_path = write_config(folder, tie_weights=tied)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_json(config_path), processor(spms["base"]).get_piece_size())
    save_state_dict(model.state_dict(), folder / f"base{suffix}")
    return folder / f"base{suffix}", config_path


def extend(spms, model_path: Path, config: Path, out: Path, *extra: str) -> int:
    return script("extend_vocab").main(["--input_model_path", str(model_path), "--config_path", str(config),
                                        "--base_spm_model_path", str(spms["base"]), "--spm_model_path",
                                        str(spms["merged"]), "--output_model_path", str(out), *extra])


# ------------------------------------------------------------------------------------------------------------ merge
@pytest.mark.parametrize("name", ["merged", "merged_zero"])
def test_merge_keeps_base_pieces_and_appends_each_new_piece_once(spms, name):
    base, extra, merged = proto(spms["base"]), proto(spms["extra"]), proto(spms[name])
    n = len(base.pieces)
    assert [(p.piece, p.score, p.type) for p in merged.pieces[:n]] == [(p.piece, p.score, p.type)
                                                                     for p in base.pieces]
    have = {p.piece for p in base.pieces}
    expected = [p.piece for p in extra.pieces if p.piece not in have]
    assert [p.piece for p in merged.pieces[n:]] == expected
    assert len({p.piece for p in merged.pieces}) == len(merged.pieces)
    assert all(p.type == p.NORMAL for p in merged.pieces[n:])
    assert len(expected) > 50  # the Chinese words and characters
    assert merged.trainer_spec.byte_fallback and merged.normalizer_spec.name == base.normalizer_spec.name


def test_merge_scores_ranked_below_the_base_or_zero(spms):
    base, ranked, zero = proto(spms["base"]), proto(spms["merged"]), proto(spms["merged_zero"])
    n = len(base.pieces)
    lowest = min(p.score for p in base.pieces if p.type == p.NORMAL)
    scores = [p.score for p in ranked.pieces[n:]]
    assert all(s < lowest for s in scores) and scores == sorted(scores, reverse=True) and len(set(scores)) == len(
        scores)
    assert all(p.score == 0.0 for p in zero.pieces[n:])


def test_merged_tokenizer_never_encodes_to_more_tokens_and_decodes_back(spms):
    base, merged = processor(spms["base"]), processor(spms["merged"])
    texts = sentences(ZH_WORDS + EN_WORDS, 300, 7, "") + sentences(EN_WORDS, 100, 8, " ") + [ZH_TEXT]
    fewer = 0
    for text in texts:
        old, new = base.encode(text), merged.encode(text)
        assert len(new) <= len(old), text
        assert merged.decode(new) == text
        fewer += len(new) < len(old)
    assert fewer > 250  # the texts with Chinese get shorter


def test_merge_script_prints_sizes_and_trains_the_extra_model(spms, tmp_path, capsys):
    merge = script("merge_tokenizers")
    assert merge.main(["--base_spm_model_path", str(spms["base"]), "--corpus_path", str(spms["corpus_zh"]),
                       "--extra_vocab_size", "380", "--character_coverage", "1.0", "--output_dir",
                       str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    base, extra = proto(spms["base"]), proto(tmp_path / "out" / "extra_spm.model")
    merged = proto(tmp_path / "out" / "tokenizer.model")
    added = len(merged.pieces) - len(base.pieces)
    assert f"base {len(base.pieces)} pieces, extra {len(extra.pieces)}, added {added}, merged {len(merged.pieces)}" \
        in out
    assert {"tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_merge_script_refuses_a_file_that_is_not_a_model(spms, tmp_path):
    from tencentpretrain.errors import InputError

    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(InputError, match="--extra_spm_model_path.*bogus.model"):
        script("merge_tokenizers").main(["--base_spm_model_path", str(spms["base"]), "--extra_spm_model_path",
                                         str(bogus), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "tokenizer.model").exists()


def test_tokenizer_stats_table_and_json(spms, capsys):
    stats = script("tokenizer_stats")
    args = ["--corpus_path", str(spms["corpus_zh"]), "--spm_model_path", str(spms["base"]), str(spms["merged"])]
    assert stats.main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    lines = [line for line in spms["corpus_zh"].read_text(encoding="utf-8").splitlines() if line]
    for row, name in zip(rows, ("base", "merged")):
        sp = processor(spms[name])
        ids = [i for line in lines for i in sp.encode(line)]
        assert row["tokens"] == len(ids) and row["characters"] == sum(map(len, lines))
        assert row["byte_tokens"] == sum(sp.is_byte(i) for i in ids)
        assert row["bytes"] == sum(len(line.encode()) for line in lines)
    assert rows[0]["byte_fallback_share"] > 0.5 > rows[1]["byte_fallback_share"]
    assert stats.main(args) == 0
    assert "tok/char" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------- extend
@pytest.mark.parametrize("tied", [False, True])
def test_extended_checkpoint_keeps_old_rows_and_old_logits(spms, tmp_path, tied):
    model_path, config = base_checkpoint(tmp_path, spms, tied)
    assert extend(spms, model_path, config, tmp_path / "ext.bin") == 0
    old, new = load_state_dict(model_path), load_state_dict(tmp_path / "ext.bin")
    n, size = old[WORD_EMBEDDING].shape[0], processor(spms["merged"]).get_piece_size()
    assert new[WORD_EMBEDDING].shape[0] == size and torch.equal(new[WORD_EMBEDDING][:n], old[WORD_EMBEDDING])
    assert (LM_HEAD in new) != tied
    if not tied:
        assert torch.equal(new[LM_HEAD][:n], old[LM_HEAD])
    assert all(torch.equal(new[k], old[k]) for k in old if k not in (WORD_EMBEDDING, LM_HEAD))
    cfg = ModelConfig.from_json(config)
    before, after = build_model(cfg, n).eval(), build_model(cfg, size).eval()
    before.load_state_dict(old)
    after.load_state_dict(new, strict=not tied)
    ids = torch.tensor([processor(spms["base"]).encode("the model reads data and learns the next one")])
    with torch.no_grad():
        assert torch.equal(after(ids)[..., :n], before(ids))


def test_subword_mean_rows_are_the_mean_of_the_base_rows_of_their_text(spms, tmp_path):
    model_path, config = base_checkpoint(tmp_path, spms)
    assert extend(spms, model_path, config, tmp_path / "ext.bin") == 0
    old, new = load_state_dict(model_path), load_state_dict(tmp_path / "ext.bin")
    base, merged = processor(spms["base"]), processor(spms["merged"])
    n = base.get_piece_size()
    checked = 0
    for i in range(n, merged.get_piece_size()):
        piece = merged.id_to_piece(i)
        if piece.startswith("▁"):
            ids = base.encode(piece[1:])  # the dummy prefix stands for the leading "▁"
        else:  # drop the dummy prefix when it stays a piece of its own
            ids = base.encode(piece)
            if ids[0] != base.piece_to_id("▁"):
                continue
            ids = ids[1:]
        assert base.decode(ids) == piece.lstrip("▁")
        for name in (WORD_EMBEDDING, LM_HEAD):
            assert torch.allclose(new[name][i], old[name][ids].mean(0), atol=1e-7, rtol=0)
        checked += 1
    assert checked > 50


def test_subword_ids_spell_each_new_piece(spms):
    from tencentpretrain.convert.vocab import subword_ids

    base, merged = processor(spms["base"]), processor(spms["merged"])
    pieces = [merged.id_to_piece(i) for i in range(base.get_piece_size(), merged.get_piece_size())]
    for piece, ids in zip(pieces, subword_ids(spms["base"], pieces)):
        text = piece.replace("▁", " ")
        assert ids and base.decode(ids) in (text, text[1:] if text.startswith(" ") else text), piece


def test_mean_and_normal_inits(spms, tmp_path):
    model_path, config = base_checkpoint(tmp_path, spms)
    old = load_state_dict(model_path)[WORD_EMBEDDING]
    cfg = ModelConfig.from_json(config)
    state = load_state_dict(model_path)
    mean = extend_state(state, cfg, spms["base"], spms["merged"], "mean")[WORD_EMBEDDING][len(old):]
    assert torch.allclose(mean, old.mean(0).expand_as(mean), atol=1e-7)
    normal = extend_state(state, cfg, spms["base"], spms["merged"], "normal", std=0.5, seed=3)[WORD_EMBEDDING]
    again = extend_state(state, cfg, spms["base"], spms["merged"], "normal", std=0.5, seed=3)[WORD_EMBEDDING]
    assert torch.equal(normal, again) and abs(normal[len(old):].std().item() - 0.5) < 0.05


def test_safetensors_in_and_out_with_a_tied_head_written_once(spms, tmp_path):
    from safetensors import safe_open

    model_path, config = base_checkpoint(tmp_path, spms, tied=True, suffix=".safetensors")
    assert extend(spms, model_path, config, tmp_path / "ext.safetensors", "--init", "mean") == 0
    with safe_open(str(tmp_path / "ext.safetensors"), framework="pt") as f:
        assert WORD_EMBEDDING in f.keys() and LM_HEAD not in f.keys()
        assert f.get_slice(WORD_EMBEDDING).get_shape()[0] == processor(spms["merged"]).get_piece_size()


# -------------------------------------------------------------------------------------------------------- refusals
def test_extend_refuses_a_base_tokenizer_of_another_size(spms, tmp_path):
    from tencentpretrain.errors import InputError

    config = write_config(tmp_path)
    save_state_dict(build_model(ModelConfig.from_json(config), 333).state_dict(), tmp_path / "m.bin")
    n = processor(spms["base"]).get_piece_size()
    with pytest.raises(InputError, match=rf"{spms['base'].name} has {n} pieces.*embedding.weight has 333 rows"):
        extend(spms, tmp_path / "m.bin", config, tmp_path / "ext.bin")
    assert not (tmp_path / "ext.bin").exists()


def test_extend_refuses_a_tokenizer_that_does_not_extend_the_base(spms, tmp_path):
    from tencentpretrain.errors import InputError

    model_path, config = base_checkpoint(tmp_path, spms)
    with pytest.raises(InputError, match="does not extend"):
        script("extend_vocab").main(["--input_model_path", str(model_path), "--config_path", str(config),
                                     "--base_spm_model_path", str(spms["base"]), "--spm_model_path",
                                     str(spms["extra"]), "--output_model_path", str(tmp_path / "ext.bin")])


@pytest.fixture(scope="module")
def extended(spms, tmp_path_factory) -> tuple[Path, Path]:
    """An extended micro checkpoint and its config."""
    folder = tmp_path_factory.mktemp("extended")
    model_path, config = base_checkpoint(folder, spms)
    assert extend(spms, model_path, config, folder / "ext.bin") == 0
    return folder / "ext.bin", config


def test_generation_refuses_the_base_tokenizer_with_an_extended_model(spms, extended, tmp_path):
    from tencentpretrain.generation.options import add_model_args, load_engine

    model_path, config = extended
    parser = __import__("argparse").ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--load_model_path", str(model_path), "--config_path", str(config),
                              "--spm_model_path", str(spms["base"]), "--device", "cpu"])
    big, small = processor(spms["merged"]).get_piece_size(), processor(spms["base"]).get_piece_size()
    with pytest.raises(ValueError, match=rf"{small} pieces but embedding.word.embedding.weight has {big} rows"):
        load_engine(args)
    args.config_path = str(write_config(tmp_path, allow_padded_vocab=True))  # padded on purpose: allowed
    engine, _ = load_engine(args)
    assert engine.model.vocab_size == big
    args.spm_model_path = str(spms["merged"])
    args.config_path = str(config)
    assert load_engine(args)[0].model.vocab_size == big


def test_conversion_refuses_a_tokenizer_of_another_size(spms, extended, tmp_path, capsys):
    model_path, config = extended
    argv = ["--input_model_path", str(model_path), "--config_path", str(config), "--spm_model_path",
            str(spms["base"]), "--output_model_path", str(tmp_path / "hf")]
    assert run_cli(script("convert_llama_from_tencentpretrain_to_huggingface").main, argv) == 1
    err = capsys.readouterr().err
    assert f"{processor(spms['base']).get_piece_size()} pieces" in err and "rows" in err
    assert not (tmp_path / "hf").exists()


def test_preprocess_and_pretrain_refuse_a_checkpoint_of_another_vocabulary(spms, extended, tmp_path, capsys):
    model_path, config = extended
    big, small = processor(spms["merged"]).get_piece_size(), processor(spms["base"]).get_piece_size()
    preprocess = script("preprocess")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(sentences(ZH_WORDS, 200, 3, "")) + "\n", encoding="utf-8")
    assert run_cli(preprocess.main, ["--corpus_path", str(corpus), "--spm_model_path", str(spms["base"]),
                                     "--dataset_path", str(tmp_path / "d"), "--seq_length", "16",
                                     "--pretrained_model_path", str(model_path)]) == 1
    assert f"{small} pieces but embedding.word.embedding.weight has {big} rows" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    preprocess.main(["--corpus_path", str(corpus), "--spm_model_path", str(spms["base"]), "--dataset_path",
                     str(tmp_path / "d"), "--seq_length", "16"])
    argv = ["--dataset_path", str(tmp_path / "d"), "--config_path", str(config), "--pretrained_model_path",
            str(model_path), "--output_model_path", str(tmp_path / "m"), "--total_steps", "1", "--batch_size", "2",
            "--peak_flops", "1e12"]
    # no --spm_model_path: the dataset's recorded tokenizer is checked
    assert run_cli(script("pretrain").main, argv) == 1
    err = capsys.readouterr().err
    assert f"{small} pieces but embedding.word.embedding.weight has {big} rows" in err and "dataset" in err
    assert run_cli(script("pretrain").main, argv + ["--spm_model_path", str(spms["merged"])]) == 1
    assert "was made with a tokenizer of" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- Hugging Face
def test_hf_export_of_an_extended_model_loads_and_tokenizes_like_sentencepiece(spms, extended, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path, config = extended
    assert script("convert_llama_from_tencentpretrain_to_huggingface").main(
        ["--input_model_path", str(model_path), "--config_path", str(config), "--spm_model_path",
         str(spms["merged"]), "--output_model_path", str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.vocab_size == processor(spms["merged"]).get_piece_size()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sp = processor(spms["merged"])
    for text in [ZH_TEXT] + sentences(ZH_WORDS + EN_WORDS, 200, 11, ""):
        assert tokenizer(text)["input_ids"] == [1] + sp.encode(text), text


def merged_real(tmp_path: Path, scores: str) -> Path:
    tokenizers = SHARED / "tokenizers"
    merge_models(tokenizers / "llama_tokenizer.model", tokenizers / "chinese_sp.model", tmp_path / "t.model", scores)
    return tmp_path / "t.model"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("scores", ["ranked", "zero"])
def test_llama_plus_chinese_merge_has_the_published_size(tmp_path, scores):
    assert processor(merged_real(tmp_path, scores)).get_piece_size() == 49953


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
def test_real_merge_tokenizes_chinese_in_hugging_face_exactly_as_sentencepiece(tmp_path):
    from transformers import AutoTokenizer

    from tencentpretrain.convert.llama import write_hf_tokenizer
    from tencentpretrain.tokenizers import SentencePieceTokenizer

    path = merged_real(tmp_path, "ranked")
    write_hf_tokenizer(tmp_path, SentencePieceTokenizer(path))
    tokenizer, sp = AutoTokenizer.from_pretrained(tmp_path), processor(path)
    llama = processor(SHARED / "tokenizers" / "llama_tokenizer.model")
    lines = (SHARED / "corpora" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()[:150]
    for line in lines:
        ids = sp.encode(line)
        assert tokenizer(line, add_special_tokens=False)["input_ids"] == ids
        assert len(ids) <= len(llama.encode(line))


def test_extend_writes_a_config_with_the_new_vocab_size(spms, tmp_path):
    from tencentpretrain.checkpoint import load_model

    n = processor(spms["base"]).get_piece_size()
    config = write_config(tmp_path, vocab_size=n)
    save_state_dict(build_model(ModelConfig.from_json(config)).state_dict(), tmp_path / "m.bin")
    assert extend(spms, tmp_path / "m.bin", config, tmp_path / "ext.bin", "--output_config_path",
                  str(tmp_path / "ext.json")) == 0
    size = processor(spms["merged"]).get_piece_size()
    assert ModelConfig.from_json(tmp_path / "ext.json").vocab_size == size
    assert load_model(tmp_path / "ext.json", tmp_path / "ext.bin").vocab_size == size


def test_conversion_from_hugging_face_checks_the_shipped_tokenizer(spms, tmp_path, capsys):
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    padded = processor(spms["merged"]).get_piece_size() + 3
    LlamaForCausalLM(LlamaConfig(vocab_size=padded, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                 num_hidden_layers=1)).save_pretrained(tmp_path / "hf")
    shutil.copyfile(spms["merged"], tmp_path / "hf" / "tokenizer.model")
    convert = script("convert_llama_from_huggingface_to_tencentpretrain")
    argv = ["--input_model_path", str(tmp_path / "hf"), "--output_model_path", str(tmp_path / "m.bin"),
            "--output_config_path", str(tmp_path / "m.json")]
    assert run_cli(convert.main, argv) == 1
    err = capsys.readouterr().err
    assert f"{padded - 3} pieces but embedding.word.embedding.weight has {padded} rows" in err
    assert "--allow_padded_vocab" in err and not (tmp_path / "m.bin").exists()
    assert convert.main(argv + ["--allow_padded_vocab"]) == 0
    assert ModelConfig.from_json(tmp_path / "m.json").allow_padded_vocab


@pytest.mark.parametrize("tied", [False, True])
def test_an_mlm_checkpoint_grows_its_head_and_bias_and_keeps_old_logits(spms, tmp_path, tied):
    """A BERT-style model (mlm head with a bias per token): the head's rows and bias grow with the embedding, the
    new bias entries are 0, and the old tokens' scores at every position are unchanged."""
    config = write_config(tmp_path, tie_weights=tied, target=["mlm"], mask="fully_visible",
                          embedding=["word", "pos", "seg"], max_seq_length=64)
    cfg = ModelConfig.from_json(config)
    n, size = processor(spms["base"]).get_piece_size(), processor(spms["merged"]).get_piece_size()
    torch.manual_seed(0)
    before = build_model(cfg, n).eval()
    with torch.no_grad():
        before.target["mlm"].linear_2.bias.normal_(0, 1.0)
    save_state_dict(before.state_dict(), tmp_path / "bert.bin")
    assert extend(spms, tmp_path / "bert.bin", config, tmp_path / "ext.bin") == 0
    old, new = load_state_dict(tmp_path / "bert.bin"), load_state_dict(tmp_path / "ext.bin")
    head, bias = "target.mlm.linear_2.weight", "target.mlm.linear_2.bias"
    assert new[bias].shape == (size,) and torch.equal(new[bias][:n], old[bias]) and not new[bias][n:].any()
    assert (head in new) != tied and (tied or new[head].shape[0] == size)
    after = build_model(cfg, size).eval()
    after.load_state_dict(new, strict=not tied)
    ids = torch.tensor([processor(spms["base"]).encode("the model reads data and learns the next one")])
    seg = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(after(ids, seg=seg)[..., :n], before(ids, seg=seg))
