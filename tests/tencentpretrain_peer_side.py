"""TencentPretrain's own code on our checkpoint, run as a separate program (its package is also called
``tencentpretrain``, so it can never share an interpreter with ours).

    PYTHONPATH=PEER_DIR python tests/tencentpretrain_peer_side.py PEER_DIR CONFIG.json MODEL.bin INPUTS.pt OUT.pt \
        [--reference_norm]

builds TencentPretrain's model from our JSON config with its own option defaults (``tencentpretrain.opts``) and its
model builder, loads our state dict strictly (a missing or unexpected key fails), runs its forward pieces on the
inputs (``src``, ``seg``; for an encoder-decoder also ``tgt_in``, ``tgt_seg``) and saves the encoder output, the
decoder output (``decoded``) and each target's logits. ``--reference_norm`` replaces its
LayerNorm formula (unbiased std, eps added outside the root) with the standard one that transformers and we use,
so that what is left to compare is the rest of the model.
"""

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    peer, config_path, model_path, inputs_path, out_path = sys.argv[1:6]
    reference_norm = "--reference_norm" in sys.argv[6:]
    import torch
    import torch.nn.functional as F
    from tencentpretrain.layers.layer_norm import LayerNorm
    from tencentpretrain.model_builder import build_model
    from tencentpretrain.opts import model_opts

    import tencentpretrain

    where = Path(tencentpretrain.__file__).resolve()
    assert where.is_relative_to(Path(peer).resolve()), f"{where}: not the peer's package (PYTHONPATH={peer}?)"
    if reference_norm:
        LayerNorm.forward = lambda self, x: F.layer_norm(x, self.gamma.shape, self.gamma, self.beta, self.eps)
    parser = argparse.ArgumentParser()
    model_opts(parser)
    args = parser.parse_args([])
    args.__dict__.update(json.loads(Path(config_path).read_text()))
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    vocab = state["embedding.word.embedding.weight"].shape[0]
    args.tokenizer = argparse.Namespace(vocab={str(i): i for i in range(vocab)})
    args.vocab_size = vocab
    args.dropout = 0.0
    args.__dict__.setdefault("data_processor", "bert")
    model = build_model(args).eval()
    model.load_state_dict(state, strict=True)
    inputs = torch.load(inputs_path, weights_only=True)
    src, seg = inputs["src"], inputs["seg"]
    out = {}
    with torch.no_grad():
        hidden = model.encoder(model.embedding(src, seg), seg)
        out["hidden"] = hidden
        if model.decoder is not None:
            tgt_emb = model.tgt_embedding(inputs["tgt_in"], inputs["tgt_seg"])
            out["decoded"] = model.decoder(hidden, tgt_emb, (seg, inputs["tgt_seg"]))
            out["lm"] = model.target.lm.output_layer(out["decoded"])
        if "mlm" in args.target:
            mlm = model.target.mlm
            out["mlm"] = mlm.linear_2(mlm.layer_norm(mlm.act(mlm.linear_1(hidden))))
        if "sp" in args.target:
            sp = model.target.sp
            out["sp"] = sp.linear_2(torch.tanh(sp.linear_1(hidden[:, 0, :])))
    torch.save(out, out_path)


if __name__ == "__main__":
    main()
