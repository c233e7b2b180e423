"""A tiny BERT pretrained end to end: a BERT tokenizer built from the sample corpus, preprocess.py --data_processor
bert, pretrain.py (mlm + sp; one process, exact resume, ZeRO-3 on two ranks whose first step equals one process's)
and fill-mask on the result."""

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from train_support import load_script, subprocess_env
from transformers import BertTokenizerFast

from tencentpretrain.checkpoint import load_model
from tencentpretrain.cli import run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.data import BinaryDataset, DataLoader

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus.txt"


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
    """A BERT tokenizer directory over the sample's words, the sample as documents, and the bert dataset."""
    folder = tmp_path_factory.mktemp("bert")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:1200]
    sentences = [s.strip() + "." for line in lines for s in line.split(".") if s.strip()]
    words = sorted({w for s in sentences for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder / "tokenizer")  # vocab=: transformers 5
    docs = [sentences[i:i + 8] for i in range(0, len(sentences), 8)]  # documents of 8 sentences
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
    load_script("preprocess").main(["--corpus_path", str(corpus), "--tokenizer_path", str(folder / "tokenizer"),
                                    "--dataset_path", str(folder / "dataset"), "--data_processor", "bert",
                                    "--seq_length", "48"])
    return folder


def test_bert_dataset_batches(bert_data):
    dataset = BinaryDataset(bert_data / "dataset")
    assert dataset.meta["data_processor"] == "bert" and dataset.meta["format_version"] == 2
    batch = next(iter(DataLoader(dataset, 8, seed=3)))
    assert set(batch.inputs()) == {"src", "seg", "tgt_mlm", "tgt_sp"}
    cls, sep, mask = (dataset.meta["options"][k] for k in ("cls", "sep", "mask"))
    assert (batch.src[:, 0] == cls).all() and (batch.seg[:, 0] == 1).all()
    assert set(batch.tgt_sp.tolist()) <= {0, 1}
    for row in range(8):
        real = int((batch.seg[row] > 0).sum())
        assert (batch.seg[row, :real] > 0).all() and not batch.seg[row, real:].any()
        assert int((batch.src[row, :real] == sep).sum()) + int((batch.tgt_mlm[row] == sep).sum()) >= 2
        assert (batch.tgt_mlm[row] != -100).sum() >= 1 and (batch.src[row][batch.tgt_mlm[row] != -100] != cls).all()
    assert (batch.src == mask).any()
    again = next(iter(DataLoader(dataset, 8, seed=3)))
    assert torch.equal(again.src, batch.src) and torch.equal(again.tgt_mlm, batch.tgt_mlm)


def test_tiny_bert_pretrains_and_fills_masks(bert_data, tmp_path):
    config = tmp_path / "bert.json"
    data = json.loads((ROOT / "models" / "bert" / "tiny_config.json").read_text())
    config.write_text(json.dumps({**data, "dropout": 0.0, "max_seq_length": 64}))
    out = tmp_path / "bert"
    argv = ["--dataset_path", str(bert_data / "dataset"), "--tokenizer_path", str(bert_data / "tokenizer"),
            "--config_path", str(config), "--output_model_path", str(out), "--total_steps", "250",
            "--save_checkpoint_steps", "125", "--report_steps", "1", "--batch_size", "16", "--learning_rate", "4e-3",
            "--warmup", "0.05", "--peak_flops", "1e12", "--data_processor", "bert"]
    assert run_cli(load_script("pretrain").main, argv) == 0
    records = [json.loads(line) for line in Path(f"{out}-log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {"mlm_loss", "mlm_acc", "sp_loss", "sp_acc"} <= set(train[-1])
    curve = [r["mlm_loss"] for r in train]
    # The first step's loss is the untrained model's. The sample's sentences draw colours, animals and numbers at
    # random, so a masked one is often a guess among 8-10: in 250 steps the loss falls by ~25% (4.38 -> 3.26).
    assert sum(curve[-25:]) / 25 < 0.8 * curve[0], curve[::10]
    assert 0.0 <= train[-1]["sp_acc"] <= 1.0

    final = next(p for p in tmp_path.iterdir() if p.name.startswith("bert") and p.suffix in (".bin", ".safetensors")
                 and "step" not in p.name)
    model = load_model(ModelConfig.from_json(config), final)
    texts = tmp_path / "cloze.txt"
    texts.write_text("after may comes [MASK].\none plus two equals [MASK].\n", encoding="utf-8")
    assert run_cli(load_script("run_fill_mask", "inference").main, [
        "--load_model_path", str(final), "--config_path", str(config), "--tokenizer_path", str(bert_data / "tokenizer"),
        "--test_path", str(texts), "--prediction_path", str(tmp_path / "out.jsonl"), "--topk", "3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [len(r["masks"]) for r in rows] == [1, 1] and all(len(r["masks"][0]) == 3 for r in rows)
    assert model is not None


def bert_argv(bert_data: Path, config: Path, out: Path, steps: int, save: int, batch: int, *extra: str) -> list[str]:
    return ["--dataset_path", str(bert_data / "dataset"), "--tokenizer_path", str(bert_data / "tokenizer"),
            "--config_path", str(config), "--output_model_path", str(out), "--total_steps", str(steps),
            "--save_checkpoint_steps", str(save), "--report_steps", "1", "--batch_size", str(batch),
            "--learning_rate", "4e-3", "--warmup", "0.05", "--peak_flops", "1e12", "--data_processor", "bert", *extra]


def bert_config(folder: Path, dropout: float) -> Path:
    config = folder / "bert.json"
    data = json.loads((ROOT / "models" / "bert" / "tiny_config.json").read_text())
    config.write_text(json.dumps({**data, "dropout": dropout, "max_seq_length": 64}))
    return config


def train_records(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in Path(f"{out}-log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records if r["split"] == "train"}


def test_bert_resume_is_exact(bert_data, tmp_path):
    """The masks are drawn in the loader, seeded by (seed, epoch, sample): a run resumed from its step-10 state
    (dropout on, so the RNG state matters too) logs the uninterrupted run's losses and ends with its weights."""
    config = bert_config(tmp_path, dropout=0.1)
    whole, resumed = tmp_path / "whole" / "m", tmp_path / "resumed" / "m"
    pretrain = load_script("pretrain").main
    assert run_cli(pretrain, bert_argv(bert_data, config, whole, 20, 10, 8)) == 0
    assert run_cli(pretrain, bert_argv(bert_data, config, resumed, 20, 10, 8, "--resume_from_checkpoint",
                                       str(whole / "10"))) == 0
    first, again = train_records(whole), train_records(resumed)
    assert sorted(again) == list(range(11, 21))
    for step in again:
        for key in ("loss", "mlm_loss", "mlm_acc", "sp_loss", "sp_acc"):
            assert again[step][key] == first[step][key], (step, key)
    a = torch.load(whole.with_name("m.bin"), weights_only=True)
    b = torch.load(resumed.with_name("m.bin"), weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bert_zero3_on_two_ranks_starts_as_one_process(bert_data, tmp_path):
    """ZeRO-3 on two CPU ranks, batch 4 each, against one process with batch 8. The first step sees the same
    samples and masks (the loader's masks depend on the sample, not the rank): the same mlm and sp losses and
    accuracies. After it the runs part a little, as TencentPretrain's do: each rank's mlm loss is the mean over its
    own masked tokens and the ranks' gradients are averaged, which weighs tokens unlike one mean over all of them
    (docs/models.md). The consolidated model loads directly."""
    config = bert_config(tmp_path, dropout=0.0)
    single, zero3 = tmp_path / "single" / "m", tmp_path / "zero3" / "m"
    assert run_cli(load_script("pretrain").main, bert_argv(bert_data, config, single, 4, 2, 8)) == 0
    deepspeed = [shutil.which("deepspeed", path=subprocess_env()["PATH"]), "--master_port", str(free_port()),
                 "--num_gpus", "2", "pretrain.py"]
    argv = bert_argv(bert_data, config, zero3, 4, 2, 4, "--deepspeed", "--enable_zero3", "--deepspeed_config",
                     str(ROOT / "models" / "deepspeed_zero3_config.json"))
    proc = subprocess.run([*deepspeed, *argv], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mine, reference = train_records(zero3), train_records(single)
    assert sorted(mine) == [1, 2, 3, 4]
    for key in ("loss", "mlm_loss", "sp_loss"):  # rounding only: sums in another order (about 3e-6 of it)
        assert mine[1][key] == pytest.approx(reference[1][key], rel=1e-5), key
    assert mine[1]["mlm_acc"] == reference[1]["mlm_acc"] and mine[1]["sp_acc"] == reference[1]["sp_acc"]
    assert all(abs(mine[step]["loss"] - reference[step]["loss"]) < 0.05 * reference[step]["loss"] for step in mine)
    model = load_model(ModelConfig.from_json(config), zero3.with_name("m.bin"))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[2, 7, 4, 9, 3]]), seg=torch.ones(1, 5, dtype=torch.long))).all()


def test_mlm_processor_full_sentences_pretrain(bert_data, tmp_path):
    """--data_processor mlm: the sample's lines as [CLS] line [SEP] packed and cut every seq_length tokens, masked in
    the loader (one segment, no sentence labels); a tiny BERT with target ["mlm"] alone learns from it."""
    from tencentpretrain.tokenizers.wordpiece import WordPieceTokenizer

    lines = [line for line in (bert_data / "corpus.txt").read_text(encoding="utf-8").splitlines() if line][:600]
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = bert_data / "vocab.txt"
    load_script("preprocess").main(["--corpus_path", str(corpus), "--vocab_path", str(vocab), "--dataset_path",
                                    str(tmp_path / "mlm"), "--data_processor", "mlm", "--seq_length", "32"])
    dataset = BinaryDataset(tmp_path / "mlm")
    tokenizer = WordPieceTokenizer(vocab)
    stream = [t for line in lines for t in (tokenizer.cls_id, *tokenizer.encode(line), tokenizer.sep_id)]
    assert len(dataset) == len(stream) // 32 and all(dataset.length(i) == 32 for i in range(len(dataset)))
    assert [int(t) for i in range(len(dataset)) for t in dataset[i][0][:32]] == stream[:len(dataset) * 32]
    batch = next(iter(DataLoader(dataset, 8, seed=3)))
    assert set(batch.inputs()) == {"src", "seg", "tgt_mlm"} and (batch.seg == 1).all()
    assert ((batch.tgt_mlm != -100).sum(1) >= 1).all()

    config = tmp_path / "mlm.json"
    data = json.loads((ROOT / "models" / "bert" / "tiny_config.json").read_text())
    config.write_text(json.dumps({**data, "dropout": 0.0, "max_seq_length": 64, "target": ["mlm"]}))
    out = tmp_path / "m"
    argv = ["--dataset_path", str(tmp_path / "mlm"), "--vocab_path", str(vocab), "--config_path", str(config),
            "--output_model_path", str(out), "--total_steps", "80", "--save_checkpoint_steps", "80",
            "--report_steps", "1", "--batch_size", "16", "--learning_rate", "2e-3", "--warmup", "0.1",
            "--peak_flops", "1e12", "--data_processor", "mlm"]
    assert run_cli(load_script("pretrain").main, argv) == 0
    train = list(train_records(out).values())
    assert "sp_loss" not in train[-1]
    assert sum(r["loss"] for r in train[-10:]) / 10 < 0.85 * train[0]["loss"], [r["loss"] for r in train[::10]]
