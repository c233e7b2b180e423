"""pretrain.py on one CPU process: learning, checkpoints that load, reproducibility, refusals, the NaN watchdog."""

from __future__ import annotations

import json
import math

import pytest
import sentencepiece
import torch
from conftest import generated_lines
from train_support import load_script, losses, make_dataset, train_argv, write_config

from tencentpretrain import build_model, load_model
from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.data import DataLoader
from tencentpretrain.training import build as build_module
from tencentpretrain.training.loop import TrainingStopped, train

PRETRAIN = load_script("pretrain")


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_spm):
    folder = tmp_path_factory.mktemp("train_single")
    return folder, make_dataset(folder, tiny_spm), tiny_spm, write_config(folder)


def run_in_process(argv):
    """setup() + build() + train(), keeping the Run (and its in-memory model) for inspection."""
    opts, info = build_module.setup(argv)
    run = build_module.build(opts, info)
    train(run)
    run.logger.close()
    return run


def test_loss_falls_and_saved_model_gives_the_same_logits(setting):
    folder, dataset, spm, config = setting
    out = folder / "learn" / "model"
    run = run_in_process(train_argv(dataset, spm, config, out, steps=200, save=100))
    curve = losses(out.with_name("model-log.jsonl"))
    assert sorted(curve) == list(range(1, 201))
    assert curve[1] > 5.0  # ~ln(400) at the start
    assert sum(curve[s] for s in range(181, 201)) / 20 < curve[1] - 2.0
    for name in ("model-100", "model-200", "model.bin"):
        assert (out.parent / name).is_file(), name
    assert (out / "latest").read_text().strip() == "200"
    loaded = load_model(config, out.with_name("model.bin"))
    src = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    run.engine.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(src), run.engine.model(src))


def test_same_seed_same_losses_other_seed_other_losses(setting):
    folder, dataset, spm, config = setting
    curves = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        out = folder / f"seed_{name}" / "m"
        assert PRETRAIN.main(train_argv(dataset, spm, config, out, "--seed", seed, steps=4, save=4)) == 0
        curves.append(losses(out.with_name("m-log.jsonl")))
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


def test_pretrained_weights_are_loaded_and_saved_back(setting):
    folder, dataset, spm, config = setting
    torch.manual_seed(3)
    state = build_model(ModelConfig.from_json(config), 400).state_dict()
    save_state_dict(state, folder / "start.bin")
    out = folder / "chain" / "m"
    argv = train_argv(dataset, spm, config, out, "--pretrained_model_path", str(folder / "start.bin"), steps=2,
                      save=2, lr=0.0)
    assert PRETRAIN.main(argv) == 0
    saved = torch.load(out.with_name("m.bin"), weights_only=True)
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_refuses_dataset_with_another_vocab_size(setting, tmp_path, capsys):
    folder, dataset, spm, _ = setting
    config = write_config(tmp_path, vocab_size=512)
    assert run_cli(PRETRAIN.main, train_argv(dataset, spm, config, tmp_path / "m")) == 1
    err = capsys.readouterr().err
    assert "400 pieces" in err and "vocab_size is 512" in err and "micro_config.json" in err
    assert not (tmp_path / "m.bin").exists()


def test_refuses_dataset_made_with_another_tokenizer(setting, tmp_path, capsys):
    folder, dataset, _, config = setting
    corpus = tmp_path / "other.txt"
    corpus.write_text("\n".join(generated_lines(400, seed=5)) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "other"), vocab_size=400, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, normalization_rule_name="identity",
        hard_vocab_limit=False, minloglevel=2, seed_sentencepiece_size=1000, input_sentence_size=300)
    assert run_cli(PRETRAIN.main, train_argv(dataset, tmp_path / "other.model", config, tmp_path / "m")) == 1
    err = capsys.readouterr().err
    assert "fingerprint" in err and "other.model" in err


def test_seq_length_truncates_the_samples_the_model_sees(setting, tmp_path):
    folder, dataset, spm, config = setting  # the dataset's samples have 32 input positions
    opts, info = build_module.setup(train_argv(dataset, spm, config, tmp_path / "m", "--seq_length", "12", steps=3,
                                               save=3))
    run = build_module.build(opts, info)
    seen = []
    run.engine.model.embedding.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    train(run)
    run.logger.close()
    assert seen == [(8, 12)] * 3
    full = next(iter(DataLoader(run.loader.dataset, 8, seed=opts.seed)))
    first = next(iter(DataLoader(run.loader.dataset, 8, seed=opts.seed, seq_length=12)))
    assert torch.equal(first.src, full.src[:, :12]) and torch.equal(first.tgt, full.tgt[:, :12])
    assert first.tokens == 8 * 12 < full.tokens


def test_seq_length_longer_than_the_dataset_is_refused(setting, tmp_path, capsys):
    folder, dataset, spm, config = setting
    assert run_cli(PRETRAIN.main, train_argv(dataset, spm, config, tmp_path / "m", "--seq_length", "33")) == 1
    assert "--seq_length 33 > seq_length 32" in capsys.readouterr().err


def test_config_data_processor_is_the_default_of_the_flag(setting, tmp_path, capsys):
    folder, dataset, spm, _ = setting  # an lm dataset
    config = write_config(tmp_path, data_processor="alpaca")
    assert run_cli(PRETRAIN.main, train_argv(dataset, spm, config, tmp_path / "m", steps=1, save=1)) == 1
    err = capsys.readouterr().err
    assert "'lm'" in err and "'alpaca'" in err and "micro_config.json" in err and "--data_processor" in err
    argv = train_argv(dataset, spm, config, tmp_path / "m", "--data_processor", "lm", steps=1, save=1)
    assert PRETRAIN.main(argv) == 0  # the flag wins over the config's key
    (tmp_path / "lm").mkdir()
    lm_config = write_config(tmp_path / "lm", data_processor="lm")
    assert PRETRAIN.main(train_argv(dataset, spm, lm_config, tmp_path / "m2", steps=1, save=1)) == 0


def test_refuses_checkpoint_with_other_shapes(setting, tmp_path, capsys):
    folder, dataset, spm, config = setting
    small = ModelConfig.from_json(config).replace(hidden_size=32, emb_size=32, feedforward_size=88)
    save_state_dict(build_model(small, 400).state_dict(), tmp_path / "small.bin")
    argv = train_argv(dataset, spm, config, tmp_path / "m", "--pretrained_model_path", str(tmp_path / "small.bin"))
    assert run_cli(PRETRAIN.main, argv) == 1
    err = capsys.readouterr().err
    assert "embedding.word.embedding.weight" in err and "[400, 32]" in err and "[400, 64]" in err


def test_watchdog_skips_non_finite_steps_without_touching_weights(setting, tmp_path):
    folder, dataset, spm, config = setting
    opts, info = build_module.setup(train_argv(dataset, spm, config, tmp_path / "m", "--max_skipped_steps", "5",
                                               steps=8, save=8))
    run = build_module.build(opts, info)
    calls = {"n": 0}

    def poison(module, args, output):  # NaN activations in micro-batches 3 and 4
        calls["n"] += 1
        return output * math.nan if calls["n"] in (3, 4) else output

    run.engine.model.embedding.register_forward_hook(poison)
    step, results = run.engine.step, []

    def checked_step():
        before = [p.detach().clone() for p in run.engine.model.parameters()]
        result = step()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, run.engine.model.parameters()))
        results.append((result.skipped, unchanged))
        return result

    run.engine.step = checked_step
    train(run)
    assert [skipped for skipped, _ in results] == [False, False, True, True, False, False, False, False]
    assert all(unchanged == skipped for skipped, unchanged in results)
    assert run.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in run.engine.model.parameters())


def test_watchdog_stops_after_too_many_skipped_steps(setting, tmp_path, capsys):
    folder, dataset, spm, config = setting
    argv = train_argv(dataset, spm, config, tmp_path / "m", "--max_skipped_steps", "2", steps=20, save=20, lr=math.inf)
    assert run_cli(PRETRAIN.main, argv) == 1
    assert "--max_skipped_steps 2" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists()
    with pytest.raises(TrainingStopped):
        run = build_module.build(*build_module.setup(argv))
        train(run)


def test_fp16_overflow_counts_as_skipped_and_stays_out_of_the_grad_norm(setting, tmp_path):
    folder, dataset, spm, config = setting
    out = tmp_path / "m"  # fp16 autocast and GradScaler run on the CPU too
    opts, info = build_module.setup(train_argv(dataset, spm, config, out, "--fp16", "--max_skipped_steps", "0",
                                               steps=4, save=4))
    run = build_module.build(opts, info)
    weight = run.engine.model.encoder.transformer[0].feed_forward.linear_1.weight
    calls = {"n": 0}

    def overflow(grad):  # the second step's gradients overflow
        calls["n"] += 1
        return grad * math.inf if calls["n"] == 2 else grad

    weight.register_hook(overflow)
    train(run)
    run.logger.close()
    records = [json.loads(line) for line in out.with_name("m-log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1, 1]
    assert [r["grad_norm"] is None for r in records] == [False, True, False, False]  # step 2 took no step
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records if r["step"] != 2)
    assert run.skipped_steps == 1 and run.overflow_steps == 1  # counted, but never stops the run


@pytest.fixture(scope="module")
def start_checkpoint(setting):
    folder, _, _, config = setting
    torch.manual_seed(4)
    state = build_model(ModelConfig.from_json(config), 400).state_dict()
    save_state_dict(state, folder / "base.bin")
    return folder / "base.bin", state


def test_lora_run_writes_adapter_and_merged_checkpoint(setting, start_checkpoint):
    folder, dataset, spm, config = setting
    path, base = start_checkpoint
    out = folder / "lora" / "m"
    argv = train_argv(dataset, spm, config, out, "--pretrained_model_path", str(path), "--use_lora", "--lora_r", "4",
                      "--lora_alpha", "8", "--lora_dropout", "0", steps=4, save=2, lr=1e-2)
    assert PRETRAIN.main(argv) == 0
    adapter = torch.load(out.with_name("m-lora.bin"), weights_only=True)
    assert adapter and all(k.endswith((".lora_A", ".lora_B")) for k in adapter)
    assert out.with_name("m-lora-2.bin").is_file() and out.with_name("m-lora.lora.json").is_file()
    assert any(k.endswith(".lora_B") and v.abs().sum() > 0 for k, v in adapter.items())
    merged = torch.load(out.with_name("m.bin"), weights_only=True)
    assert merged.keys() == base.keys()
    from tencentpretrain.training.lora import merge_lora_state

    expected = merge_lora_state(base, adapter, 4, 8.0)
    assert all(torch.equal(merged[k], expected[k]) for k in base)
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all("linear_layers" in k for k in changed)


def test_frozen_parameters_stay_and_dev_loss_is_logged(setting, start_checkpoint):
    folder, dataset, spm, config = setting
    path, base = start_checkpoint
    out = folder / "frozen" / "m"
    argv = train_argv(dataset, spm, config, out, "--pretrained_model_path", str(path), "--freeze_patterns",
                      "embedding.*", "encoder.transformer.0", "--dev_dataset_path", str(dataset), "--dev_steps", "2",
                      "--dev_batches", "3", steps=4, save=4)
    assert PRETRAIN.main(argv) == 0
    merged = torch.load(out.with_name("m.bin"), weights_only=True)
    frozen = [k for k in base if k.startswith(("embedding.", "encoder.transformer.0."))]
    assert frozen and all(torch.equal(merged[k], base[k]) for k in frozen)
    assert not torch.equal(merged["encoder.transformer.1.feed_forward.linear_1.weight"],
                           base["encoder.transformer.1.feed_forward.linear_1.weight"])
    records = [json.loads(line) for line in out.with_name("m-log.jsonl").read_text().splitlines()]
    dev = [(r["step"], r["loss"]) for r in records if r["split"] == "dev"]
    assert [s for s, _ in dev] == [2, 4] and dev[1][1] < dev[0][1]
