"""Our BERT checkpoints in TencentPretrain's own code, run as a peer program (``tencentpretrain_peer_side.py``).

Set ``TENCENTPRETRAIN_PATH`` to a checkout of https://github.com/Tencent/TencentPretrain (the folder that holds
its ``tencentpretrain/`` package and ``models/``); without it these tests skip. Its ``normal`` LayerNorm is not the
standard formula (it divides by the unbiased standard deviation plus eps; transformers and we by the root of the
biased variance plus eps): the outputs are compared within 1e-5 (of their scale) with its norm replaced by the
standard one, and the difference its own formula makes is measured and bounded (docs/models.md records it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.model import build_model

ROOT = Path(__file__).resolve().parents[1]
PEER = os.environ.get("TENCENTPRETRAIN_PATH")
pytestmark = pytest.mark.skipif(not PEER or not (Path(PEER) / "tencentpretrain" / "opts.py").is_file(),
                                reason="TENCENTPRETRAIN_PATH is not a TencentPretrain checkout")


def peer_outputs(tmp_path, config_path, model, inputs, reference_norm):
    save_state_dict(dict(model.state_dict()), tmp_path / "model.bin")
    torch.save(inputs, tmp_path / "inputs.pt")
    command = [sys.executable, str(ROOT / "tests" / "tencentpretrain_peer_side.py"), PEER, str(config_path),
               str(tmp_path / "model.bin"), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    done = subprocess.run(command + (["--reference_norm"] if reference_norm else []), capture_output=True,
                          text=True, cwd=PEER, timeout=600,  # it reads models/ from its own folder
                          env={**os.environ, "PYTHONPATH": PEER})  # its package, not ours (installed editable)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=True)


@pytest.mark.parametrize("targets", [["mlm", "sp"], ["mlm"]])
def test_tencentpretrain_runs_our_bert(tmp_path, targets):
    data = json.loads((ROOT / "models" / "bert" / "tiny_config.json").read_text())
    data = {key: value for key, value in data.items() if key != "layernorm_eps"}  # its default: 1e-6 everywhere
    data["target"] = targets
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(data))
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_json(config_path), 120).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms and biases away from 1 and 0, so a mix-up shows
            if name.endswith(("gamma", "beta", "bias")):
                p.add_(torch.randn_like(p) * 0.3)
    src = torch.randint(1, 120, (2, 24), generator=torch.Generator().manual_seed(1))
    seg = torch.ones_like(src)
    seg[0, 10:], seg[1, 7:15], seg[1, 15:] = 2, 2, 0  # pairs, the second row padded
    with torch.no_grad():
        hidden = model.encode(src, seg=seg)
        ours = {"hidden": hidden, "mlm": model.target["mlm"].logits(hidden)}
        if "sp" in targets:
            ours["sp"] = model.target["sp"].logits(hidden)
    real = seg > 0
    theirs = peer_outputs(tmp_path, config_path, model, {"src": src, "seg": seg}, reference_norm=True)
    assert set(theirs) == set(ours)
    for name, value in ours.items():
        keep = real if value.dim() == 3 else slice(None)
        diff = (value[keep] - theirs[name][keep]).abs().max().item()
        scale = max(1.0, value[keep].abs().max().item())  # logits reach ~50 here, where fp32's step is 4e-6
        assert diff <= 1e-5 * scale, f"{name}: max abs difference {diff} at scale {scale}"
    own = peer_outputs(tmp_path, config_path, model, {"src": src, "seg": seg}, reference_norm=False)
    relative = ((ours["hidden"] - own["hidden"])[real].abs().max() / ours["hidden"][real].abs().max()).item()
    assert 1e-4 < relative < 0.05, relative  # its formula's own difference: visible, and small (hidden 128)
    print(f"TencentPretrain's own LayerNorm formula moves the encoder output by {relative:.2e} of its scale")


def compare(ours, theirs, rows):
    """Each output within 1e-5 of its scale, on the real positions ``rows`` gives per output."""
    assert set(theirs) == set(ours)
    for name, value in ours.items():
        keep = rows[name]
        diff = (value[keep] - theirs[name][keep]).abs().max().item()
        scale = max(1.0, value[keep].abs().max().item())
        assert diff <= 1e-5 * scale, f"{name}: max abs difference {diff} at scale {scale}"


@pytest.mark.parametrize("zoo", ["t5/tiny_config.json", "t5-v1_1/tiny_config.json", "bart/tiny_config.json"])
def test_tencentpretrain_runs_our_encoder_decoders(tmp_path, zoo):
    """Its T5 reads the encoder's bias table from per-layer names (our checkpoints write them too: a missing one
    fails its strict load); it has no T5 v1.0 head rescale (our tied_head_rescale), so the heads are compared on
    the unscaled decoder output; its BART LayerNorm is replaced by the standard one, as for BERT."""
    data = json.loads((ROOT / "models" / zoo).read_text())
    data = {key: value for key, value in data.items() if key != "layernorm_eps"}  # its embedding norm: 1e-6
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(data))
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_json(config_path, dropout=0.0), 120).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms, biases and bias tables away from 1 and 0
            if name.endswith(("gamma", "beta", "bias", "norm_1.weight", "norm_2.weight", "norm_3.weight",
                              "layer_norm.weight", "relative_attention_bias.weight")):
                p.add_(torch.randn_like(p) * 0.3)
    generator = torch.Generator().manual_seed(1)
    src, tgt_in = torch.randint(1, 120, (2, 140), generator=generator), torch.randint(1, 120, (2, 9),
                                                                                     generator=generator)
    seg, tgt_seg = torch.ones_like(src), torch.ones_like(tgt_in)
    seg[1, 100:] = 0
    with torch.no_grad():
        memory = model.encode_memory(src, seg)
        decoded = model.decode_hidden(tgt_in, memory)
        ours = {"hidden": memory.hidden, "decoded": decoded, "lm": model.target["lm"].output_layer(decoded)}
    inputs = {"src": src, "seg": seg, "tgt_in": tgt_in, "tgt_seg": tgt_seg}
    theirs = peer_outputs(tmp_path, config_path, model, inputs, reference_norm="bart" in zoo)
    compare(ours, theirs, {"hidden": seg > 0, "decoded": tgt_seg > 0, "lm": tgt_seg > 0})
    if "bart" in zoo:
        own = peer_outputs(tmp_path, config_path, model, inputs, reference_norm=False)
        relative = ((decoded - own["decoded"]).abs().max() / decoded.abs().max()).item()
        assert 1e-4 < relative < 0.05, relative  # its formula's own difference: visible, and small (hidden 64)
        print(f"TencentPretrain's own LayerNorm formula moves the BART decoder output by {relative:.2e} of its scale")


def test_tencentpretrain_refuses_a_t5_checkpoint_without_the_per_layer_bias_names(tmp_path):
    """What TencentPretrain's own converter writes (the table under encoder.relative_pos_emb only) its strict load
    refuses; with strict=False its layers would keep random tables. Ours writes both names."""
    config_path = ROOT / "models" / "t5" / "tiny_config.json"
    model = build_model(ModelConfig.from_json(config_path), 120).eval()
    state = {k: v for k, v in model.state_dict().items() if ".relative_pos_emb." not in k or k.startswith(
        "encoder.relative_pos_emb.")}
    save_state_dict(state, tmp_path / "model.bin")
    src = torch.ones(1, 4, dtype=torch.long)
    torch.save({"src": src, "seg": src, "tgt_in": src, "tgt_seg": src}, tmp_path / "inputs.pt")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "tencentpretrain_peer_side.py"), PEER,
                           str(config_path), str(tmp_path / "model.bin"), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, cwd=PEER, timeout=600,
                          env={**os.environ, "PYTHONPATH": PEER})  # its package, not ours (installed editable)
    assert done.returncode != 0 and "encoder.transformer.0.relative_pos_emb.relative_attention_bias" in done.stderr
