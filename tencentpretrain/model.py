"""The model: embedding -> encoder -> [tgt_embedding -> decoder] -> targets, each part looked up by name from the
config. Decoder-only and BERT-style models have no decoder; an encoder-decoder (T5, BART) has both."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from tencentpretrain.cache import KVCache
from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.decoders import Memory
from tencentpretrain.embeddings import Embedding
from tencentpretrain.layers.rope import RotaryEmbedding
from tencentpretrain.registry import DECODERS, ENCODERS, TARGETS

# The targets that project to the vocabulary, and the tensor that ``tie_weights`` makes the word embedding.
VOCAB_HEADS = {"lm": "target.lm.output_layer.weight", "mlm": "target.mlm.linear_2.weight"}
TGT_WORD_EMBEDDING = "tgt_embedding.word.embedding.weight"  # an encoder-decoder's second vocabulary-sized tensor
# Every tensor with one row per token (the vocabulary checks compare their rows with the tokenizer's pieces).
VOCAB_TENSORS = ("embedding.word.embedding.weight", TGT_WORD_EMBEDDING, *VOCAB_HEADS.values())


def vocab_head(config: ModelConfig) -> str | None:
    """Name of the head weight with one row per token (``lm``'s, else ``mlm``'s), None when no target has one."""
    return next((VOCAB_HEADS[name] for name in ("lm", "mlm") if name in config.target), None)


class Model(nn.Module):
    """A TencentPretrain-style model; ``model(src)`` returns the vocabulary target's logits (B, T, vocab):
    next-token scores for ``lm``, the scores at each position for ``mlm``. An encoder-decoder is run as
    ``model.decode(tgt_in, model.encode_memory(src, seg))`` instead.

    With ``share_embedding`` the decoder's word embedding is the encoder's module itself, so that the checkpoint
    names ``embedding.word`` and ``tgt_embedding.word`` stay one tensor through loading.

    Attributes:
        config: the architecture it was built from.
        vocab_size: rows of the word embedding and of the vocabulary head.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, checkpoint_activations: bool = False):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = Embedding(config, vocab_size)
        self.encoder = ENCODERS.get(config.encoder)(config, checkpoint_activations=checkpoint_activations)
        self.tgt_embedding = self.decoder = None
        if config.decoder is not None:
            self.tgt_embedding = Embedding(config, vocab_size, names=config.tgt_embedding)
            if config.share_embedding:
                self.tgt_embedding.word = self.embedding.word
            self.decoder = DECODERS.get(config.decoder)(config, checkpoint_activations=checkpoint_activations)
        self.target = nn.ModuleDict({name: TARGETS.get(name)(config, vocab_size) for name in config.target})
        self.vocab_target = next((name for name in ("lm", "mlm") if name in config.target), None)

    def reset_buffers(self, device: torch.device | str = "cpu") -> None:
        """Recompute non-persistent buffers (rotary tables), e.g. after building on the meta device."""
        for module in self.modules():
            if isinstance(module, RotaryEmbedding):
                module.reset(device)

    def encode(self, src: torch.Tensor, positions: torch.Tensor | None = None,
               padding_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               seg: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, hidden) of ``src`` (B, T); see ``TransformerEncoder.forward`` for the rest.

        ``seg`` (B, T): segments numbered from 1, 0 at padding. Given without ``padding_mask``, its zeros are the
        padding (TencentPretrain's rule).
        """
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + src.shape[1], device=src.device)  # (T,)
        if padding_mask is None and seg is not None and not bool(seg.all()):
            padding_mask = seg > 0  # (B, T)
        return self.encoder(self.embedding(src, positions, seg), positions, padding_mask, cache)

    def forward(self, src: torch.Tensor, positions: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                seg: torch.Tensor | None = None) -> torch.Tensor:
        """The vocabulary target's logits (B, T, vocab)."""
        if self.decoder is not None:
            raise ConfigError(f"{self.config.source or 'the model'} is an encoder-decoder: call "
                              "model.decode(tgt_in, model.encode_memory(src, seg)) (inference/run_seq2seq.py)")
        if self.vocab_target is None:
            raise ConfigError(f"{self.config.source or 'the model'} has no target that scores the vocabulary "
                              f"(target {list(self.config.target)}; lm or mlm does)")
        return self.target[self.vocab_target].logits(self.encode(src, positions, padding_mask, cache, seg))

    def loss(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training objective: the sum of the targets' losses.

        Args:
            inputs: ``src`` (B, T), ``seg`` (B, T) if the data has segments, and each target's ``label`` tensor
                (``tgt`` for lm, ``tgt_mlm`` for mlm, ``tgt_sp`` for sp).

        Returns:
            The loss and its metrics: ``loss`` (the sum, detached) and ``tokens`` (the first target's count);
            with several targets also ``{name}.loss``, ``{name}.tokens`` and ``{name}.correct`` of each.
        """
        missing = [target.label for target in self.target.values() if target.label not in inputs]
        if missing:
            raise ConfigError(f"the batch has no {', '.join(missing)} for target {list(self.config.target)}: "
                              "is the dataset made by the data processor of this config?")
        if self.decoder is not None:
            return self._seq2seq_loss(inputs)
        hidden = self.encode(inputs["src"], seg=inputs.get("seg"))
        total, metrics = None, {}
        for name, target in self.target.items():
            loss, parts = target(hidden, inputs[target.label])
            total = loss if total is None else total + loss
            if len(self.target) == 1:
                return loss, parts
            metrics.update({f"{name}.{key}": value for key, value in parts.items()})
            metrics.setdefault("tokens", parts["tokens"])
        metrics["loss"] = total.detach()
        return total, metrics

    # --------------------------------------------------------------------------------------- encoder-decoder
    def _seq2seq_loss(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The lm loss of an encoder-decoder on ``src``/``seg`` (source) and ``tgt_in``/``tgt_seg``/``tgt``."""
        if "tgt_in" not in inputs:
            raise ConfigError(f"the batch has no tgt_in (the decoder input) for decoder {self.config.decoder!r}: is "
                              "the dataset made by a seq2seq data processor (t5, bart)?")
        tgt_seg = inputs.get("tgt_seg")
        hidden = self.decode_hidden(inputs["tgt_in"], self.encode_memory(inputs["src"], inputs.get("seg"),
                                                                         keys_values=False), tgt_seg=tgt_seg)
        return self.target["lm"](hidden, inputs["tgt"], loss_mask=tgt_seg)

    def encode_memory(self, src: torch.Tensor, seg: torch.Tensor | None = None,
                      keys_values: bool = True) -> Memory:
        """Encode the source ``src`` (B, S) once for the decoder.

        Args:
            src: source ids.
            seg: (B, S) 1 at real tokens, 0 at padding (None: no padding).
            keys_values: also compute every decoder layer's cross-attention keys and values (generation).
        """
        hidden = self.encode(src, seg=seg)  # (B, S, hidden)
        mask = None if seg is None or bool(seg.all()) else (seg > 0)[:, None, None, :]  # (B, 1, 1, S)
        return Memory(hidden, mask, self.decoder.keys_values(hidden) if keys_values else None)

    def decode_hidden(self, tgt_in: torch.Tensor, memory: Memory, cache: KVCache | None = None,
                      tgt_seg: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output (B, T, hidden) for ``tgt_in`` (B, T) at positions from ``cache.length`` on.

        Args:
            tgt_in: decoder input ids (the target shifted right, starting with the decoder's start token).
            memory: from :meth:`encode_memory`.
            cache: self-attention keys and values of earlier target positions (:meth:`decoder_cache`).
            tgt_seg: (B, T) 1 at real target tokens, 0 at padding (training; None: no padding).
        """
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + tgt_in.shape[1], device=tgt_in.device)  # (T,)
        padding = None if tgt_seg is None or bool(tgt_seg.all()) else tgt_seg > 0  # (B, T)
        return self.decoder(self.tgt_embedding(tgt_in, positions, tgt_seg), memory, padding, cache)

    def decode(self, tgt_in: torch.Tensor, memory: Memory, cache: KVCache | None = None,
               tgt_seg: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, vocab) of the decoder (arguments as :meth:`decode_hidden`)."""
        return self.target["lm"].logits(self.decode_hidden(tgt_in, memory, cache, tgt_seg))

    def decoder_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty self-attention cache for ``max_length`` target positions of ``batch_size`` sequences."""
        weight = self.tgt_embedding.word.embedding.weight
        return KVCache(self.config.decoder_layers, batch_size, self.config.kv_heads_num, max_length,
                       self.config.head_dim, dtype=weight.dtype, device=weight.device)


def tie_weights(model: Model) -> None:
    """Share the word embedding with the vocabulary head (GPT-2's and BERT's ``tie_weights``); an encoder-decoder's
    head is its decoder's word embedding (TencentPretrain's rule)."""
    head = model.target[model.vocab_target]
    layer = head.output_layer if model.vocab_target == "lm" else head.linear_2
    words = model.tgt_embedding.word if model.tgt_embedding is not None else model.embedding.word
    layer.weight = words.embedding.weight


def build_model(config: ModelConfig, vocab_size: int | None = None, checkpoint_activations: bool = False) -> Model:
    """Assemble the model a config describes.

    Args:
        config: the architecture.
        vocab_size: rows of the embedding; defaults to ``config.vocab_size``.
        checkpoint_activations: recompute each layer's activations in the backward pass (training).

    Raises:
        ValueError: when neither gives a vocabulary size, or they disagree.
    """
    if vocab_size is None:
        vocab_size = config.vocab_size
    if vocab_size is None:
        raise ConfigError("vocabulary size unknown: set \"vocab_size\" in the config or pass a tokenizer")
    if config.vocab_size is not None and config.vocab_size != vocab_size:
        raise ConfigError(f"vocab_size {config.vocab_size} in {config.source or 'the config'} disagrees with "
                         f"the tokenizer's {vocab_size}")
    model = Model(config, vocab_size, checkpoint_activations)
    if config.tie_weights:
        tie_weights(model)
    return model
