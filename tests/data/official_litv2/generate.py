"""Regenerate the LITv2 fixtures of tests/test_litv2.py with the authors' own code.

Run with the shared tool's work folder (``../shared/tools/official-litv2/setup.sh WORK REPO``):

    OFFICIAL_LITV2_WORK=WORK PYTHON tests/data/official_litv2/generate.py

It imports the tool's ``make_fixtures`` (which puts the authors' classification code on the path,
with their DCN replaced by torchvision's ``deform_conv2d``) and builds LITv2-S and its two alpha
end points smaller than the tool does (official head counts, windows and alpha; 2 channels per
head, depths 1-1-2-1, 10 classes, 64 px) so that the files stay small. The tool's informative
initialisation and offset calibration are applied, then every float tensor is rounded to bfloat16
so that weights and inputs are stored losslessly in half the bytes; the authors' model runs in
float32 on the rounded values.

Per model NAME: ``NAME.pth`` (``{'model': state_dict}``, the release layout) and
``NAME_expected.pt``: inputs 2x3x64x64 and 1x3x96x96 (bfloat16), eval logits at both sizes,
train-mode logits (DTM's BatchNorm on batch statistics) and each stage's output tokens in eval
mode. ``keys/``: the full-size release layouts (key and shape per line) of LITv2-S/M/B and the alpha 0
and 1 releases, as the shared tool lists them from the authors' code (``out/official_keys``).
The suite itself never needs the authors' code.
"""
import os
import sys

import torch

TOOL = os.environ.get("OFFICIAL_LITV2_TOOL", "/work/shared/tools/official-litv2")
sys.path.insert(0, TOOL)
import make_fixtures as mf  # noqa: E402  (sets up the authors' code)

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = [
    # name, authors' yaml, overrides, seed
    ("litv2_s_mini", "litv2-small.yaml", {}, 7101),
    ("litv2_s_mini_alpha0", "litv2-small.yaml", {"MODEL.LIT.ALPHA": "0.0"}, 7303),
    ("litv2_s_mini_alpha1", "litv2-small.yaml", {"MODEL.LIT.ALPHA": "1.0"}, 7404),
]
OPTS = {"MODEL.LIT.EMBED_DIM": "6", "MODEL.LIT.DEPTHS": "[1, 1, 2, 1]", "MODEL.DROP_PATH_RATE": "0.0",
        "MODEL.NUM_CLASSES": "10", "DATA.IMG_SIZE": "64"}


def stage_outputs(model, x):
    feats = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o.detach().clone()))
             for k, layer in enumerate(model.layers)]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, [feats[k] for k in range(4)]


def build(name, yaml_name, overrides, seed):
    opts = dict(OPTS, **overrides)
    cfg = mf.cfg_for(yaml_name, mf.opts_list(opts))
    torch.manual_seed(seed)
    model = mf.build_model(cfg)
    mf.informative_init(model, seed)
    mf.calibrate_offsets(model, seed + 7)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.bfloat16().float())
    model.eval()
    sd = {k: (v.bfloat16() if v.is_floating_point() else v.clone()) for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 100)
    x64 = torch.randn(2, 3, 64, 64, generator=g).bfloat16()
    x96 = torch.randn(1, 3, 96, 96, generator=g).bfloat16()
    logits, feats = stage_outputs(model, x64.float())
    model96 = mf.build_model(mf.cfg_for(yaml_name, mf.opts_list(dict(opts, **{"DATA.IMG_SIZE": "96"}))))
    model96.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits96 = model96.eval()(x96.float())
        logits_train = model.train()(x64.float())  # updates the running statistics: sd was taken before
    torch.save({"model": sd}, os.path.join(HERE, f"{name}.pth"))
    torch.save({"alpha": cfg.MODEL.LIT.ALPHA, "depths": list(cfg.MODEL.LIT.DEPTHS),
                "num_heads": list(cfg.MODEL.LIT.NUM_HEADS), "embed_dim": cfg.MODEL.LIT.EMBED_DIM,
                "input": x64, "logits_eval": logits, "logits_train": logits_train, "features_eval": feats,
                "input_96": x96, "logits_96_eval": logits96},
               os.path.join(HERE, f"{name}_expected.pt"))
    print(name, sum(p.numel() for p in model.parameters()), "params")


if __name__ == "__main__":
    for row in MODELS:
        build(*row)
