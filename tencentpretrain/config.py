"""The model's architecture as a frozen dataclass whose fields are TencentPretrain's JSON keys.

``ModelConfig.from_json("models/llama/7b_config.json")`` loads an existing TencentPretrain config unchanged,
refuses keys it does not know (listing the valid ones) and checks the rules between fields. Run settings
(paths, batch size, learning rate, steps) are not here: they belong to the training options.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.registry import (
    ACTIVATIONS,
    DATA_PROCESSORS,
    DECODERS,
    EMBEDDINGS,
    ENCODERS,
    FEED_FORWARDS,
    NORMS,
    ROPE_SCALINGS,
    TARGETS,
)

MASKS = ("causal", "fully_visible")
LAYERNORM_POSITIONS = ("pre", "post")


class ConfigError(InputError):
    """A model config that cannot describe a model; the message names the file and key."""


@dataclass(frozen=True)
class RopeScaling:
    """The ``rope_scaling`` object: how the rotary frequencies are stretched beyond the pretraining context.

    Keys are transformers' (``rope_type`` one of ``ROPE_SCALINGS.names()``: ``linear``, ``dynamic``, ``llama3``,
    ``yarn``); each type's required keys are checked here and its frequencies computed in ``layers/rope_scaling.py``.
    """

    rope_type: str
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float | None = None  # yarn (default 32)
    beta_slow: float | None = None  # yarn (default 1)
    attention_factor: float | None = None  # yarn: scale of cos/sin (default from factor and mscale)
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn: round the correction range to whole dimensions

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> RopeScaling:
        """Read the JSON object strictly: unknown keys, unknown types and missing required keys raise."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}rope_scaling must be an object such as {{\"rope_type\": \"linear\", "
                              f"\"factor\": 2.0}} or null, got {data!r}")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"{where}unknown rope_scaling key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: {', '.join(sorted(valid))}")
        kind = data.get("rope_type")
        if kind not in ROPE_SCALINGS:
            raise ConfigError(f"{where}unsupported rope_scaling rope_type {kind!r}; "
                              f"known: {', '.join(ROPE_SCALINGS.names())}")
        missing = [key for key in ROPE_SCALINGS.get(kind).required if data.get(key) is None]
        if missing:
            raise ConfigError(f"{where}rope_scaling of type {kind!r} needs {', '.join(missing)}")
        for key, value in data.items():
            if key not in ("rope_type", "truncate") and value is not None and (
                    not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{where}rope_scaling {key} must be a positive number, got {value!r}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, without the keys left at None."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None and not (f.name == "truncate" and self.truncate)}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a TencentPretrain-style model. Field names are the JSON keys of ``models/**/*.json``."""

    emb_size: int = 768
    hidden_size: int = 768
    feedforward_size: int = 3072
    heads_num: int = 12
    local_kv_heads_num: int | None = None  # grouped-query attention: key/value heads (None = heads_num)
    layers_num: int = 12
    dropout: float = 0.1
    max_seq_length: int = 512
    # The defaults of embedding, target, mask and layernorm_positioning are TencentPretrain's (its BERT), so that a
    # TencentPretrain config that leaves them out builds the same model here (docs/models.md, "Defaults").
    embedding: tuple[str, ...] = ("word",)
    encoder: str = "transformer"
    decoder: str | None = None  # "transformer": an encoder-decoder (T5, BART); None: encoder only
    decoder_layers_num: int | None = None  # layers of the decoder (None = layers_num)
    tgt_embedding: tuple[str, ...] | None = None  # the decoder input's embedding parts, e.g. ["word", "pos"]
    share_embedding: bool = False  # the decoder's word embedding is the encoder's
    target: tuple[str, ...] = ("mlm",)
    mask: str = "fully_visible"
    layernorm_positioning: str = "post"
    layernorm: str = "normal"
    layernorm_eps: float = 1e-6
    feed_forward: str = "dense"
    hidden_act: str = "gelu"
    remove_transformer_bias: bool = False
    remove_embedding_layernorm: bool = False
    rotary_position_embedding: bool = False
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # {"rope_type": "llama3" | "linear" | "dynamic" | "yarn", ...}
    attention_head_size: int | None = None  # width of one head when it is not hidden_size / heads_num (Qwen3)
    qkv_bias: bool = False  # biases on the query/key/value projections only, not the output (Qwen2)
    qk_norm: bool = False  # a `layernorm` over each query and key head before the rotation (Qwen3)
    sliding_window: int | None = None  # each query sees only the last sliding_window keys, itself included (Mistral)
    remove_attention_scale: bool = False  # attention scores are q.k, not q.k / sqrt(head_dim) (T5)
    relative_position_embedding: bool = False  # T5's bucketed relative position bias on the self-attention scores
    relative_attention_buckets_num: int = 32  # buckets of that bias (half per direction in the encoder)
    tie_weights: bool = False
    tied_head_rescale: bool = False  # the lm head reads hidden * hidden_size ** -0.5 (T5 v1.0, tied)
    has_lmtarget_bias: bool = False
    vocab_size: int | None = None  # None: taken from the tokenizer or the checkpoint
    allow_padded_vocab: bool = False  # the embedding/head may have more rows than the tokenizer has pieces
    data_processor: str | None = None  # the default of pretrain.py --data_processor (checked against the dataset)
    source: str | None = field(default=None, compare=False, repr=False)  # file it was read from, for messages

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("embedding", "target", "tgt_embedding"):  # JSON gives lists; keep it hashable and immutable
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            where = f"{self.source}: " if self.source else ""
            object.__setattr__(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling, where))
        self._check()

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> ModelConfig:
        """Build a config from a dict of JSON keys; unknown keys raise ConfigError naming them."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}a model config must be a JSON object, got {type(data).__name__}")
        valid = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"{where}unknown config key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: {', '.join(sorted(valid))}")
        return cls(**data, source=source)

    @classmethod
    def from_json(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        """Read a TencentPretrain JSON config strictly; ``overrides`` replace keys after reading."""
        path = Path(path)
        data = read_json_object(path, ConfigError, missing=f"{path}: config file not found", what="a model config")
        return cls.from_dict({**data, **overrides}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON keys and values, lists for sequences, without None-valued optional keys."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "source" or value is None:
                continue
            if isinstance(value, RopeScaling):
                value = value.to_dict()
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def save(self, path: str | Path) -> None:
        """Write the config as TencentPretrain-style JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some keys changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def kv_heads_num(self) -> int:
        """Number of key/value heads (equals ``heads_num`` without grouped-query attention)."""
        return self.local_kv_heads_num or self.heads_num

    @property
    def causal(self) -> bool:
        """Whether the model predicts the next token from the ones before it (``lm`` target, causal mask, no
        decoder): what the generation engine, the server and the GGUF export need."""
        return "lm" in self.target and self.mask == "causal" and self.decoder is None

    @property
    def encoder_decoder(self) -> bool:
        """Whether a decoder reads the encoder's output (T5, BART: ``inference/run_seq2seq.py``)."""
        return self.decoder is not None

    @property
    def decoder_layers(self) -> int:
        """Layers of the decoder: ``decoder_layers_num``, else ``layers_num``."""
        return self.decoder_layers_num or self.layers_num

    def require_causal(self, what: str) -> None:
        """Refuse a model that does not predict the next token, naming ``what`` needed it."""
        if not self.causal:
            raise ConfigError(f"{self.source or 'the model config'}: {what} needs a causal language model (target "
                              f"lm, mask causal, no decoder), this one has target {list(self.target)}, mask "
                              f"{self.mask!r} and decoder {self.decoder!r}" + self._causal_hint())

    def _causal_hint(self) -> str:
        """Where a model that is not causal is run instead."""
        if self.decoder is not None:
            return " (an encoder-decoder translates a source: inference/run_seq2seq.py)"
        return " (a BERT model fills masks: inference/run_fill_mask.py)" if "mlm" in self.target else ""

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``attention_head_size``, else ``hidden_size / heads_num``."""
        return self.attention_head_size or self.hidden_size // self.heads_num

    # ----------------------------------------------------------------------------------------------- checking
    def _check_types(self) -> None:
        """Every value has its field's JSON type (numbers, strings, lists of strings), so the rules can compare."""
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        def names(value: Any) -> bool:
            return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str)
                                                                                       for v in value))

        kinds = {"float": (number, "a number"), "str": (lambda v: isinstance(v, str), "a string"),
                 "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
                 "tuple[str, ...]": (names, "a list of strings"),
                 "tuple[str, ...] | None": (lambda v: v is None or names(v), "a list of strings or null")}
        for f in dataclasses.fields(self):
            check, kind = kinds.get(f.type, (None, ""))
            if check is not None and f.name != "source" and not check(getattr(self, f.name)):
                where = f"{self.source}: " if self.source else ""
                raise ConfigError(f"{where}{f.name} must be {kind}, got {getattr(self, f.name)!r}")

    def _check(self) -> None:
        where = f"{self.source}: " if self.source else ""

        def fail(message: str) -> None:
            raise ConfigError(where + message)

        for key in ("emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num", "max_seq_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(f"{key} must be a positive integer, got {value!r}")
        for key in ("remove_transformer_bias", "remove_embedding_layernorm", "rotary_position_embedding",
                    "tie_weights", "has_lmtarget_bias", "allow_padded_vocab", "qkv_bias", "qk_norm",
                    "remove_attention_scale", "share_embedding", "relative_position_embedding", "tied_head_rescale"):
            if not isinstance(getattr(self, key), bool):
                fail(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout!r}")
        for key in ("attention_head_size", "sliding_window", "decoder_layers_num"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                fail(f"{key} must be a positive integer or null, got {value!r}")
        if self.attention_head_size is None and self.hidden_size % self.heads_num:
            fail(f"hidden_size {self.hidden_size} is not divisible by heads_num {self.heads_num}")
        kv = self.kv_heads_num
        if not isinstance(kv, int) or kv <= 0 or self.heads_num % kv:
            fail(f"heads_num {self.heads_num} is not divisible by local_kv_heads_num {self.local_kv_heads_num!r}")
        if self.emb_size != self.hidden_size:
            fail(f"emb_size {self.emb_size} must equal hidden_size {self.hidden_size} "
                 "(factorized embeddings are not supported)")
        buckets = self.relative_attention_buckets_num
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 4:
            fail(f"relative_attention_buckets_num must be an integer of at least 4, got {buckets!r}")
        if self.relative_position_embedding and self.rotary_position_embedding:
            fail("relative_position_embedding and rotary_position_embedding exclude each other: choose one")
        if self.rotary_position_embedding and self.head_dim % 2:
            fail(f"rotary_position_embedding needs an even head size, got {self.head_dim}")
        if self.qkv_bias and not self.remove_transformer_bias:
            fail("qkv_bias: true needs remove_transformer_bias: true (otherwise every projection has a bias)")
        if self.rope_scaling is not None and not self.rotary_position_embedding:
            fail("rope_scaling needs rotary_position_embedding: true")
        if self.sliding_window is not None and self.mask != "causal":
            fail(f"sliding_window needs mask: causal, got {self.mask!r}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size <= 0):
            fail(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.rope_theta <= 0:
            fail(f"rope_theta must be positive, got {self.rope_theta!r}")
        if self.layernorm_eps <= 0:
            fail(f"layernorm_eps must be positive, got {self.layernorm_eps!r}")
        if self.mask not in MASKS:
            fail(f"unknown mask {self.mask!r}; known: {', '.join(MASKS)}")
        if self.layernorm_positioning not in LAYERNORM_POSITIONS:
            fail(f"unknown layernorm_positioning {self.layernorm_positioning!r}; "
                 f"known: {', '.join(LAYERNORM_POSITIONS)}")
        if not self.embedding or self.embedding[0] != "word":
            fail(f"embedding must start with 'word', got {list(self.embedding)}")
        self._check_decoder(fail)
        checks = [(EMBEDDINGS, n) for n in self.embedding + (self.tgt_embedding or ())]
        checks += [(TARGETS, n) for n in self.target]
        checks += [(ENCODERS, self.encoder), (NORMS, self.layernorm), (FEED_FORWARDS, self.feed_forward),
                   (ACTIVATIONS, self.hidden_act)]
        if self.data_processor is not None:
            checks.append((DATA_PROCESSORS, self.data_processor))
        for registry, name in checks:
            if name not in registry:
                fail(f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")
        for key in ("embedding", "target"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                fail(f"{key} names a part twice: {list(names)}")
        if not self.target:
            fail("target must name at least one target, e.g. [\"lm\"] or [\"mlm\", \"sp\"]")
        if self.tie_weights and not {"lm", "mlm"} & set(self.target):
            fail(f"tie_weights: true needs a target with a vocabulary head (lm or mlm), got {list(self.target)}")
        if self.tied_head_rescale and not (self.tie_weights and "lm" in self.target):
            fail("tied_head_rescale: true needs tie_weights: true and the lm target (T5 v1.0's tied head)")
        if "lm" in self.target and self.decoder is None and self.mask != "causal":
            fail(f"target lm (next-token prediction) needs mask: causal, got {self.mask!r} (a TencentPretrain config "
                 "that leaves mask out means fully_visible: add \"mask\": \"causal\")")

    def _check_decoder(self, fail) -> None:
        """The rules of the encoder-decoder keys (``decoder``, ``tgt_embedding``, ``share_embedding``, ...)."""
        if self.decoder is None:
            for key in ("tgt_embedding", "decoder_layers_num"):
                if getattr(self, key) is not None:
                    fail(f"{key} is set but decoder is null: name a decoder (known: {', '.join(DECODERS.names())})")
            if self.share_embedding:
                fail("share_embedding: true needs a decoder (it shares the encoder's word embedding with it)")
            return
        if self.decoder not in DECODERS:
            fail(f"unknown decoder {self.decoder!r}; known: {', '.join(DECODERS.names())}")
        if not self.tgt_embedding or self.tgt_embedding[0] != "word":
            fail(f"decoder {self.decoder!r} needs tgt_embedding starting with 'word' (e.g. [\"word\"]), got "
                 f"{None if self.tgt_embedding is None else list(self.tgt_embedding)}")
        if len(set(self.tgt_embedding)) != len(self.tgt_embedding):
            fail(f"tgt_embedding names a part twice: {list(self.tgt_embedding)}")
        if list(self.target) != ["lm"]:
            fail(f"decoder {self.decoder!r}: an encoder-decoder scores the target tokens with target [\"lm\"], "
                 f"got {list(self.target)}")
        if self.mask != "fully_visible":
            fail(f"decoder {self.decoder!r}: the encoder of an encoder-decoder sees the whole source (mask: "
                 f"fully_visible), got {self.mask!r}")
        for key in ("rotary_position_embedding", "sliding_window", "qk_norm"):
            if getattr(self, key):
                fail(f"{key} is not supported with a decoder")
