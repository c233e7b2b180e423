"""Tiny random Hugging Face T5 and BART models for the encoder-decoder tests, written as directories the way a
transformers checkout on the hub would have them, and the padded batches they are compared on."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

VOCAB = 120
SRC_LENGTH = 140  # beyond T5's max_distance 128: the logarithmic buckets and the last one are used


def _perturb(model: torch.nn.Module, keys: tuple[str, ...]) -> None:
    """Norm weights, biases and bias tables away from their 1/0 initial values, so that a mix-up shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(key in name for key in keys):
                p.add_(torch.randn_like(p) * 0.3)


def tiny_t5(version: str, seed: int = 0) -> T5ForConditionalGeneration:
    """T5 v1.0 (relu, tied head rescaled by d_model^-0.5) or v1.1 (gated-gelu, a head of its own, 3 heads of 8
    in a 32-wide model: attention_head_size apart from hidden_size / heads)."""
    torch.manual_seed(seed)
    v11 = version == "v1.1"
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                      num_heads=3 if v11 else 4, feed_forward_proj="gated-gelu" if v11 else "relu",
                      dropout_rate=0.0, tie_word_embeddings=not v11, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    if v11:
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.5)
    _perturb(model, ("layer_norm", "relative_attention_bias"))
    return model


def tiny_bart(seed: int = 0) -> BartForConditionalGeneration:
    """BART with learned positions (offset 2), post-norm, layernorm_embedding and a random final_logits_bias."""
    torch.manual_seed(seed)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                        max_position_embeddings=160, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        init_std=0.2, forced_eos_token_id=None, forced_bos_token_id=None)
    model = BartForConditionalGeneration(config).eval()
    _perturb(model, ("layer_norm", "layernorm_embedding", "bias"))
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    return model


def save_hf(model: torch.nn.Module, folder: Path, drop: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """``model`` as a Hugging Face directory: one safetensors file (without the names in ``drop``) and config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {name: t.contiguous() for name, t in model.state_dict().items() if name not in drop}
    seen, unique = set(), {}
    for name, tensor in state.items():  # a tied tensor is written once, as transformers does
        if tensor.data_ptr() not in seen:
            unique[name] = tensor
            seen.add(tensor.data_ptr())
    save_file(unique, str(folder / "model.safetensors"), metadata={"format": "pt"})
    data = model.config.to_dict() | {"architectures": [type(model).__name__]} | (config or {})
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    return folder


def save_t5(model: T5ForConditionalGeneration, folder: Path) -> Path:
    untied = model.lm_head.weight is not model.shared.weight
    extra = {"tie_word_embeddings": False, "scale_decoder_outputs": False} if untied else {}
    return save_hf(model, folder, drop=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"), config=extra)


def padded_batch(src_length: int = SRC_LENGTH, tgt_length: int = 9, seed: int = 1):
    """Source ids and mask (second row padded), target input ids and mask (first row padded)."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(3, VOCAB, (2, src_length), generator=generator)
    seg = torch.ones_like(src)
    seg[1, src_length - 25:] = 0
    src[1, src_length - 25:] = 1
    tgt_in = torch.randint(3, VOCAB, (2, tgt_length), generator=generator)
    tgt_seg = torch.ones_like(tgt_in)
    tgt_seg[0, tgt_length - 3:] = 0
    return src, seg, tgt_in, tgt_seg


def both_logits(hf, ours, batch):
    """Our logits and transformers' on one padded batch (src, seg, tgt_in, tgt_seg)."""
    src, seg, tgt_in, tgt_seg = batch
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=seg, decoder_input_ids=tgt_in,
                    decoder_attention_mask=tgt_seg).logits
        mine = ours.decode(tgt_in, ours.encode_memory(src, seg), tgt_seg=tgt_seg)
    return mine, theirs
