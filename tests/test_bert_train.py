"""A tiny BERT pretrained end to end: a BERT tokenizer built from the sample corpus, preprocess.py --data_processor
bert, pretrain.py (mlm + sp; one process, resume) and fill-mask on the result."""

import json
import re
from pathlib import Path

import pytest
import torch
from train_support import load_script
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
