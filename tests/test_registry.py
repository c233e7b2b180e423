import pytest

import tencentpretrain  # noqa: F401  (fills the registries)
from tencentpretrain.registry import ACTIVATIONS, DECODERS, ENCODERS, FEED_FORWARDS, NORMS, Registry


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError, match=r"unknown encoder 'transformr'; known: transformer"):
        ENCODERS.get("transformr")


def test_duplicate_name_is_refused():
    registry = Registry("thing")
    registry.register("a")(object)
    with pytest.raises(KeyError, match="duplicate thing name 'a'"):
        registry.register("a")(int)


def test_leaf_kinds_are_registered():
    assert NORMS.names() == ["normal", "rms", "t5"]
    assert DECODERS.names() == ["transformer"]
    assert FEED_FORWARDS.names() == ["dense", "gated"]
    assert ACTIVATIONS.names() == ["gelu", "gelu_fast", "linear", "relu", "silu"]
