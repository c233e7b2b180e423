"""Training building blocks: schedules, weight-decay groups, options, the DeepSpeed config, logs, plot_loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_support import MICRO_LLAMA, load_script

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.cli import run_cli
from tencentpretrain.registry import SCHEDULERS
from tencentpretrain.training import checkpointing
from tencentpretrain.training.deepspeed_config import deepspeed_config
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.logging import TrainLogger, progress_line, read_log
from tencentpretrain.training.optim import build_scheduler, param_groups
from tencentpretrain.training.options import build_parser, parse_options
from tencentpretrain.training.plain_engine import PlainEngine
from tencentpretrain.training.schedules import warmup_steps_of

BASE = ["--output_model_path", "out/m", "--config_path", "c.json"]


def lrs(name: str, warmup: int, total: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, name, warmup, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_schedules_warm_up_then_follow_their_shape():
    assert {"constant", "linear", "cosine"} <= set(SCHEDULERS.names())
    for name in ("constant", "linear", "cosine"):
        assert lrs(name, 4, 20)[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs("constant", 4, 20)[4:] == [2.0] * 16
    linear, cosine = lrs("linear", 4, 20), lrs("cosine", 4, 20)
    assert linear[12] == pytest.approx(1.0) and linear[-1] == pytest.approx(2.0 / 16)
    assert cosine[12] == pytest.approx(1.0) and cosine[-1] < 0.05 and cosine[8] > linear[8]
    assert warmup_steps_of(0.1, 300) == 30 and warmup_steps_of(50, 300) == 50


def test_weight_decay_groups_by_dimension_and_skip_frozen():
    model = build_model(ModelConfig.from_dict(MICRO_LLAMA), 100)
    model.encoder.transformer[0].self_attn.final_linear.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == sum(p.requires_grad for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        param_groups(model, 0.1)


def test_options_come_from_the_dataclass_and_bad_combinations_exit(capsys):
    opts = parse_options([*BASE, "--lora_target_modules", "a", "b", "--local_rank=1", "--bf16"])
    assert opts.lora_target_modules == ("a", "b") and opts.local_rank == 1 and opts.precision == "bf16"
    assert opts.total_steps == 100000 and opts.log_file == "out/m-log.jsonl"
    assert build_parser().get_default("scheduler") == "linear"
    for bad, message in ((["--scheduler", "cosin"], "invalid choice"), (["--enable_zero3"], "needs --deepspeed"),
                         (["--fp16", "--bf16"], "exclude"), (["--batch_size", "0"], "--batch_size")):
        with pytest.raises(SystemExit) as exit_info:
            parse_options([*BASE, *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


TENCENT_ZERO3 = {
    "gradient_accumulation_steps": 1, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 8,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-5, "weight_decay": 1e-2}},
    "scheduler": {"type": "WarmupLR"}, "fp16": {"enabled": True, "loss_scale": 0},
    "flops_profiler": {"enabled": True},
    "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True},
                          "offload_optimizer": {"device": "cpu", "pin_memory": True}},
}


def test_deepspeed_config_entries_come_from_our_flags(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(TENCENT_ZERO3))
    opts = parse_options([*BASE, "--deepspeed", "--enable_zero3", "--deepspeed_config", str(path), "--batch_size",
                          "24", "--accumulation_steps", "3", "--learning_rate", "2e-4", "--max_grad_norm", "0.5"])
    notes: list[str] = []
    gpu = deepspeed_config(opts, on_cuda=True, note=notes.append)
    assert (gpu["train_micro_batch_size_per_gpu"], gpu["gradient_accumulation_steps"]) == (24, 3)
    assert "train_batch_size" not in gpu and gpu["gradient_clipping"] == 0.5
    assert gpu["optimizer"]["params"] == {"lr": 2e-4, "weight_decay": 1e-2}
    assert gpu["fp16"]["enabled"] and "scheduler" not in gpu and gpu["zero_optimization"]["offload_param"]
    notes.clear()
    cpu = deepspeed_config(opts, on_cuda=False, note=notes.append)
    assert not cpu["fp16"]["enabled"] and "optimizer" not in cpu and not cpu["flops_profiler"]["enabled"]
    assert "offload_param" not in cpu["zero_optimization"] and not cpu["zero_force_ds_cpu_optimizer"]
    assert any("fp16 disabled" in n for n in notes) and any("AdamW" in n for n in notes)
    assert json.loads(path.read_text()) == TENCENT_ZERO3  # the file itself is left alone


def test_log_jsonl_csv_resume_truncation_and_tensorboard(tmp_path):
    record = {"split": "train", "step": 1, "total_steps": 3, "loss": 2.0, "ppl": math.e**2, "lr": 1e-3,
              "grad_norm": 0.5, "tokens_per_s": 1000.0, "mfu": 0.25, "eta": "0m01s", "skipped_steps": 0}
    for suffix in (".jsonl", ".csv"):
        path = tmp_path / f"log{suffix}"
        logger = TrainLogger(path, str(tmp_path / "tb"), enabled=True)
        for step in (1, 2, 3):
            logger.log({**record, "step": step, "loss": float(step)}, echo=False)
        logger.close()
        TrainLogger(path, None, enabled=True, resume_step=2).log({**record, "step": 3, "loss": 9.0}, echo=False)
        assert [(r["step"], r["loss"]) for r in read_log(path)] == [(1, 1.0), (2, 2.0), (3, 9.0)]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    line = progress_line(record)
    for part in ("step       1/3", "loss 2.0000", "ppl", "lr 1.000e-03", "grad norm 0.500", "1,000 tok/s", "MFU 25.0%",
                 "ETA 0m01s"):
        assert part in line


def test_plot_loss_draws_a_png(tmp_path, capsys):
    log = tmp_path / "m-log.jsonl"
    log.write_text("".join(json.dumps({"split": s, "step": i, "loss": 5.0 / i}) + "\n"
                           for i in range(1, 6) for s in ("train", "dev")))
    plot = load_script("scripts/plot_loss")
    assert plot.main(["--log_path", str(log), "--output_path", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = ["--log_path", str(tmp_path / "none.jsonl"), "--output_path", str(tmp_path / "x.png")]
    assert run_cli(plot.main, missing) == 1
    assert "none.jsonl not found" in capsys.readouterr().err


def test_latest_state_ignores_staged_and_names_missing(tmp_path):
    with pytest.raises(CheckpointError, match="latest"):
        checkpointing.latest_state(tmp_path)
    for step in (5, 10):
        stage = checkpointing.staging_dir(str(tmp_path), step)
        stage.mkdir(parents=True)
        (stage / "rank0.pt").write_bytes(b"x")
        checkpointing.publish_state(str(tmp_path), step)
    checkpointing.staging_dir(str(tmp_path), 15).mkdir()  # a save that died half-way
    assert checkpointing.latest_state(tmp_path) == tmp_path / "10"
    assert checkpointing.latest_state(tmp_path / "5") == tmp_path / "5"


def test_fp16_overflow_is_a_skipped_step_that_leaves_the_weights():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(MICRO_LLAMA), 100)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-2)
    scheduler = build_scheduler(optimizer, "constant", 0, 10)
    engine = PlainEngine(model, optimizer, scheduler, DistInfo(), precision="fp16")  # GradScaler on the CPU
    ids = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(1))
    for overflow in (False, True):
        loss, _ = engine.forward({"src": ids[:, :-1], "tgt": ids[:, 1:]}, boundary=True)
        engine.backward(loss)
        if overflow:
            model.encoder.transformer[0].feed_forward.linear_1.weight.grad[0, 0] = math.inf
        before = [p.detach().clone() for p in model.parameters()]
        scale = engine.scaler.get_scale()
        result = engine.step()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert (result.skipped, result.scale_overflow, unchanged) == (overflow, overflow, overflow)
        assert math.isfinite(result.grad_norm) != overflow
        assert (engine.scaler.get_scale() < scale) == overflow
