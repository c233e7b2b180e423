"""The perplexity task against lm-evaluation-harness itself, run offline on our model exported to Hugging Face format
with a local task file over the same documents (skipped without ``lm_eval``; its ``hf`` backend needs accelerate)."""

from __future__ import annotations

import json
import random

import pytest
from conftest import WORDS
from evaluation_support import script_main, tiny_model

from tencentpretrain.evaluation.perplexity import rolling_windows

lm_eval = pytest.importorskip("lm_eval")

SEQ_LENGTH = 16
TASK = """task: tp_local_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def documents() -> list[str]:
    """Short and long documents (one window, several), Chinese, digits, punctuation, a newline, a periodic one."""
    rng = random.Random(7)
    docs = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in (2, 9, 40, 75)]
    docs += ["数据模型训练，语言 3.14 and the 2026 epoch!", "the loss\nof the model  reads tokens 中文文本",
             "数据 模型 训练 and learns " * 10]
    return docs


def test_rolling_windows_are_lm_evals(tiny_spm):
    """Our windows are lm_eval's get_rolling_token_windows + make_disjoint_window fed as (context + target)[:-1]."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for length in (1, 5, 15, 16, 17, 31, 32, 33, 100):
        tokens = list(range(10, 10 + length))
        for seq_length in (1, 2, 16):
            theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, seq_length, 1)]
            ours = rolling_windows(tokens, 1, seq_length)
            assert [(w.inputs, w.targets) for w in ours] == [((c + t)[:-1], t) for c, t in theirs]


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_spm):
    return tiny_model(tmp_path_factory.mktemp("lm_eval_model"), tiny_spm)


def run_lm_eval(model, tmp_path, monkeypatch) -> dict:
    pytest.importorskip("accelerate", reason="lm_eval's hf backend imports accelerate (pip install -e .[eval])")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents()), "utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tp_local_perplexity.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model.hf_dir), "dtype": "float32", "max_length": SEQ_LENGTH,
                                "add_bos_token": False, "logits_cache": False},
        tasks=["tp_local_perplexity"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        batch_size=4, device="cpu", verbosity="ERROR")
    return out["results"]["tp_local_perplexity"]


def test_perplexity_matches_lm_evaluation_harness(model, tmp_path, monkeypatch):
    theirs = run_lm_eval(model, tmp_path, monkeypatch)
    status = script_main("evaluate")(["--task", "perplexity", *model.model_flags(),
                                      "--corpus_path", str(tmp_path / "docs.jsonl"), "--seq_length",
                                      str(SEQ_LENGTH), "--batch_size", "3", "--output_path", str(tmp_path / "o.json")])
    assert status == 0
    ours = json.loads((tmp_path / "o.json").read_text(encoding="utf-8"))
    assert ours["tokens"] > 4 * SEQ_LENGTH  # several documents roll over more than one window
    for metric in ("bits_per_byte", "word_perplexity", "byte_perplexity"):
        assert ours[metric] == pytest.approx(theirs[f"{metric},none"], rel=1e-4), metric
