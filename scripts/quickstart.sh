#!/usr/bin/env bash
# The main job end to end on the sample the project ships (examples/), on the CPU, in a few minutes:
# tokenizer -> preprocess (lm) -> pretrain a tiny LLaMA -> preprocess (alpaca) -> instruction-tune it
# -> convert to Hugging Face and back -> generate (-> GGUF for llama.cpp, when installed); then vocabulary
# extension: a tokenizer for the second sample language (Chinese) merged into ours, the pretrained model extended
# and trained on it in two stages -> generate; then a tiny BERT: WordPiece vocabulary -> preprocess (bert) ->
# pretrain (mlm + nsp) -> fill masks. Everything is written under quickstart_out/ (or $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-test,deepspeed,logging,serve,gguf} bash scripts/setup_env.sh  # llamacpp and eval: see README
PY=.venv/bin/python
OUT=${OUT:-quickstart_out}
CONFIG=models/llama/tiny_config.json
mkdir -p "$OUT"
set -x
$PY scripts/train_tokenizer.py --corpus_path examples/corpus.txt --model_prefix "$OUT/tokenizer" --vocab_size 512

$PY preprocess.py --corpus_path examples/corpus.txt --spm_model_path "$OUT/tokenizer.model" \
    --dataset_path "$OUT/dataset_lm" --data_processor lm --seq_length 128 --processes_num 2 --overwrite
$PY pretrain.py --dataset_path "$OUT/dataset_lm" --spm_model_path "$OUT/tokenizer.model" --config_path $CONFIG \
    --output_model_path "$OUT/tiny_llama" --data_processor lm --total_steps 400 --save_checkpoint_steps 400 \
    --batch_size 16 --learning_rate 3e-3 --warmup 0.05 --scheduler cosine --report_steps 50

$PY preprocess.py --corpus_path examples/instructions.json --spm_model_path "$OUT/tokenizer.model" \
    --dataset_path "$OUT/dataset_alpaca" --data_processor alpaca --seq_length 256 --overwrite
$PY pretrain.py --dataset_path "$OUT/dataset_alpaca" --spm_model_path "$OUT/tokenizer.model" --config_path $CONFIG \
    --pretrained_model_path "$OUT/tiny_llama.bin" --output_model_path "$OUT/tiny_llama_chat" \
    --data_processor alpaca --total_steps 150 --save_checkpoint_steps 150 --batch_size 16 --learning_rate 1e-3 \
    --warmup 0.05 --report_steps 50

$PY scripts/convert_llama_from_tencentpretrain_to_huggingface.py --input_model_path "$OUT/tiny_llama_chat.bin" \
    --config_path $CONFIG --spm_model_path "$OUT/tokenizer.model" --output_model_path "$OUT/tiny_llama_chat_hf"

$PY inference/run_llama.py --load_model_path "$OUT/tiny_llama.bin" --config_path $CONFIG \
    --spm_model_path "$OUT/tokenizer.model" --test_path examples/prompts.txt \
    --prediction_path "$OUT/predictions.txt" --max_new_tokens 24 --temperature 0
$PY inference/run_llama.py --load_model_path "$OUT/tiny_llama_chat_hf" --template alpaca \
    --test_path examples/questions.txt --prediction_path "$OUT/answers.txt" --max_new_tokens 24 --temperature 0

# Vocabulary extension (docs/vocabulary.md): merge a small Chinese tokenizer into ours, grow the pretrained model,
# stage 1 (transformer frozen) then stage 2 (LoRA + embedding and head) on the Chinese sample, merge, generate.
ZH_SPM="$OUT/tokenizer_zh/tokenizer.model"
$PY scripts/merge_tokenizers.py --base_spm_model_path "$OUT/tokenizer.model" --corpus_path examples/corpus_zh.txt \
    --extra_vocab_size 400 --character_coverage 1.0 --output_dir "$OUT/tokenizer_zh"
$PY scripts/extend_vocab.py --input_model_path "$OUT/tiny_llama.bin" --config_path $CONFIG \
    --base_spm_model_path "$OUT/tokenizer.model" --spm_model_path "$ZH_SPM" --output_model_path "$OUT/tiny_llama_ext.bin"
$PY preprocess.py --corpus_path examples/corpus_zh.txt --spm_model_path "$ZH_SPM" --dataset_path "$OUT/dataset_zh" \
    --data_processor lm --seq_length 64 --pretrained_model_path "$OUT/tiny_llama_ext.bin" --overwrite
$PY pretrain.py --dataset_path "$OUT/dataset_zh" --spm_model_path "$ZH_SPM" --config_path $CONFIG \
    --pretrained_model_path "$OUT/tiny_llama_ext.bin" --output_model_path "$OUT/tiny_llama_zh_stage1" \
    --freeze_patterns encoder --total_steps 40 --save_checkpoint_steps 40 --batch_size 16 --learning_rate 1e-2 \
    --warmup 0.05 --report_steps 20
$PY pretrain.py --dataset_path "$OUT/dataset_zh" --spm_model_path "$ZH_SPM" --config_path $CONFIG \
    --pretrained_model_path "$OUT/tiny_llama_zh_stage1.bin" --output_model_path "$OUT/tiny_llama_zh_stage2" \
    --use_lora --lora_r 8 --lora_alpha 16 --lora_target_modules self_attn feed_forward \
    --lora_train_modules embedding.word target.lm.output_layer --total_steps 40 --save_checkpoint_steps 40 \
    --batch_size 16 --learning_rate 3e-3 --warmup 0.05 --report_steps 20
$PY scripts/merge_lora.py --base_model_path "$OUT/tiny_llama_zh_stage1.bin" \
    --lora_model_path "$OUT/tiny_llama_zh_stage2-lora.bin" --output_model_path "$OUT/tiny_llama_zh.bin"
$PY inference/run_llama.py --load_model_path "$OUT/tiny_llama_zh.bin" --config_path $CONFIG --spm_model_path "$ZH_SPM" \
    --test_path examples/prompts_zh.txt --prediction_path "$OUT/predictions_zh.txt" --max_new_tokens 16 --temperature 0

# BERT (docs/models.md): a WordPiece vocabulary of the sample, the sample cut into documents of 8 lines (a blank line
# between them), sentence pairs with next-sentence labels, masked-LM + NSP pretraining of a tiny BERT, masks filled.
$PY scripts/train_tokenizer.py --model_type wordpiece --corpus_path examples/corpus.txt --model_prefix "$OUT/bert" \
    --vocab_size 1000
awk '{print} NR % 8 == 0 {print ""}' examples/corpus.txt > "$OUT/corpus_documents.txt"
$PY preprocess.py --corpus_path "$OUT/corpus_documents.txt" --vocab_path "$OUT/bert-vocab.txt" \
    --dataset_path "$OUT/dataset_bert" --data_processor bert --seq_length 64 --processes_num 2 --overwrite
$PY pretrain.py --dataset_path "$OUT/dataset_bert" --vocab_path "$OUT/bert-vocab.txt" \
    --config_path models/bert/tiny_config.json --output_model_path "$OUT/tiny_bert" --data_processor bert \
    --total_steps 600 --save_checkpoint_steps 600 --batch_size 16 --learning_rate 1e-3 --warmup 0.1 --report_steps 50
$PY inference/run_fill_mask.py --load_model_path "$OUT/tiny_bert.bin" --config_path models/bert/tiny_config.json \
    --vocab_path "$OUT/bert-vocab.txt" --test_path examples/cloze.txt --prediction_path "$OUT/cloze.jsonl" --topk 3

# Optional, when the gguf package and llama-cpp-python are installed (docs/deployment.md): the chat model as a GGUF
# file with the alpaca chat template answers the same questions through llama.cpp exactly as ours did above.
if $PY -c "import gguf, llama_cpp" 2>/dev/null; then
    $PY scripts/convert_llama_from_tencentpretrain_to_gguf.py --input_model_path "$OUT/tiny_llama_chat.bin" \
        --config_path $CONFIG --spm_model_path "$OUT/tokenizer.model" --output_model_path "$OUT/tiny_llama_chat.gguf" \
        --outtype f32 --template alpaca
    $PY inference/run_llama_cpp.py --load_model_path "$OUT/tiny_llama_chat.gguf" --test_path examples/questions.txt \
        --prediction_path "$OUT/answers_llama_cpp.txt" --max_new_tokens 24 --temperature 0 --kv_cache_type f32
    cmp "$OUT/answers.txt" "$OUT/answers_llama_cpp.txt"
    { set +x; } 2>/dev/null
    echo "llama.cpp answers as ours: $OUT/answers_llama_cpp.txt"
fi
