"""preprocess.py and the loader on the real corpora with the LLaMA tokenizer (skipped without ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from test_data_preprocess import preprocess

from tencentpretrain.data import BinaryDataset, DataLoader
from tencentpretrain.registry import TEMPLATES
from tencentpretrain.targets import IGNORE_INDEX

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.exists(), reason="shared data not available")
LLAMA = SHARED / "tokenizers" / "llama_tokenizer.model"


@pytest.fixture(scope="module")
def sp():
    return sentencepiece.SentencePieceProcessor(model_file=str(LLAMA))


def test_clue_lm_with_llama_tokenizer(tmp_path, sp):
    corpus = SHARED / "corpora" / "clue_small_zh.txt"
    for n in (1, 2):
        report = preprocess(corpus, LLAMA, tmp_path / f"p{n}", "--seq_length", "512", "--processes_num", str(n),
                            "--chunk_size", "256")
    for name in ("meta.json", "tokens.bin", "index.bin"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes()
    ds = BinaryDataset(tmp_path / "p2")
    lines = corpus.read_text(encoding="utf-8").splitlines()
    assert report["counts"]["documents"] == len(lines) == 2500
    assert ds.meta["vocab_size"] == 32000 and ds.meta["special_tokens"] == {"bos": 1, "eos": 2, "pad": 0, "unk": 0}
    assert np.dtype(ds.meta["token_dtype"]) == np.uint16 and len(ds) == report["counts"]["samples"] > 1000
    stream = [t for line in lines[:5] for t in [1, *sp.encode(line.strip()), 2]]
    got = np.concatenate([ds[i][0] for i in range(len(stream) // 513)]).tolist()
    assert got == stream[:len(got)]
    batch = next(iter(DataLoader(ds, 2, rank=1, world_size=2)))
    assert batch.src.shape == (2, 512) and batch.tokens == 1024 and (batch.tgt != IGNORE_INDEX).all()


def test_alpaca_zh_with_llama_tokenizer(tmp_path, sp):
    corpus = SHARED / "instructions" / "alpaca_zh_demo.json"
    report = preprocess(corpus, LLAMA, tmp_path / "sft", "--data_processor", "alpaca", "--seq_length", "512",
                        "--processes_num", "2", "--chunk_size", "100")
    records = json.loads(corpus.read_text(encoding="utf-8"))
    ds = BinaryDataset(tmp_path / "sft")
    assert len(ds) == len(records) == report["counts"]["documents"] == 1000 and report["counts"]["skipped"] == 0
    lengths = [ds.length(i) for i in range(len(ds))]
    assert sum(n == 513 for n in lengths) == report["counts"]["truncated"] and max(lengths) <= 513
    record = records[0]
    fields = [record[k].replace("\\n", "\n") for k in ("instruction", "input", "output")]
    prompt = sp.encode(TEMPLATES.get("alpaca").render(fields[0], fields[1]))
    response = sp.encode(fields[2])
    tokens, mask = ds[0]
    kept = min(len(response), 511 - len(prompt))
    assert tokens[: 1 + len(prompt) + kept].tolist() == [1, *prompt, *response[:kept]]
    assert tokens[1:][mask].tolist() == [*response[:kept], 2]
