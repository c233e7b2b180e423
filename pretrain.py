"""Pretrain or instruction-tune a TencentPretrain-style model: one CPU process, torchrun (DDP) or DeepSpeed.

    python pretrain.py --dataset_path dataset --spm_model_path tokenizer.model \
        --config_path models/llama/7b_config.json --pretrained_model_path models/llama-7b.bin \
        --output_model_path models/llama_zh_7b --total_steps 1000 --save_checkpoint_steps 500 --batch_size 8
    torchrun --nproc_per_node 2 pretrain.py ...
    deepspeed pretrain.py --deepspeed --deepspeed_config models/deepspeed_zero3_config.json --enable_zero3 ...

Writes ``<output>.bin`` at the end, ``<output>-<step>`` every --save_checkpoint_steps and the training state under
``<output>/`` (see docs/training.md); ``--resume`` continues from the latest state.
"""

from __future__ import annotations

from tencentpretrain.cli import run_cli
from tencentpretrain.training.distributed import end_process
from tencentpretrain.training.loop import main

if __name__ == "__main__":
    end_process(run_cli(main))  # a rank of a launcher's run exits without the native teardown that can abort it
