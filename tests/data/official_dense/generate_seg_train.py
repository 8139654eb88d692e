#!/usr/bin/env python
"""Record mmseg 0.13's training loss and gradients of Semantic FPN with the LIT authors' own code.

A development script, not run by the test suite (which needs no mmcv / mmseg). For each tiny
Semantic FPN release of ``tests/data/official_dense`` (``sem_fpn_lit_ti.npz``, ``sem_fpn_lit_s.npz``)
it builds the authors' ``EncoderDecoder`` from the release's own config text, loads the release's
weights, and runs ``model.forward_train(img, img_metas, gt_semantic_seg)`` in train mode (the
BatchNorms on batch statistics; dropout and drop path switched off by putting those modules in eval
mode, so that the run is deterministic) on a fixed batch of two images whose labels hold ignored
pixels (255). It keeps, in ``seg_train_NAME.npz``:

* ``pixels`` (uint8 [2, H, W, 3], RGB) and ``labels`` (uint8 [2, H, W]): the batch; the network
  input is ``(pixels - mean) / std`` in float32 with the config's mean / std;
* ``loss`` / ``acc`` (float64): ``decode.loss_seg`` and ``decode.acc_seg``;
* ``grad/KEY`` (float32): the gradient of a few release parameters (names as in the release);
* ``grad_norm`` (float64): the 2-norm of every parameter's gradient together;
* ``init`` (JSON in ``record``): the initial weights the authors' code gives the neck and head at
  the paper's widths (FPN 256, head 128; seeded), per conv / BatchNorm: shape, std, max |w|,
  max |bias|: which initialisation mmseg 0.13 applies (see the report in ``record['init_rule']``).

Usage (after the reference tool's ``setup.sh WORK OFFICIAL_LIT``)::

    PYTHON tests/data/official_dense/generate_seg_train.py --work /work/od \\
        --tool /work/shared/tools/official-dense
"""
import argparse
import json
import os
import os.path as osp
import sys

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.abspath(osp.join(HERE, "..", "..", ".."))

GRAD_KEYS = {
    "sem_fpn_lit_ti": ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                       "decode_head.scale_heads.0.0.conv.weight", "decode_head.scale_heads.3.0.bn.weight",
                       "decode_head.scale_heads.2.2.bn.bias", "neck.lateral_convs.0.conv.weight",
                       "neck.fpn_convs.3.conv.bias", "backbone.patch_embed1.proj.weight", "backbone.pos_embed2"],
    "sem_fpn_lit_s": ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                      "decode_head.scale_heads.0.0.conv.weight", "decode_head.scale_heads.3.0.bn.weight",
                      "neck.lateral_convs.1.conv.weight", "neck.fpn_convs.0.conv.bias",
                      "backbone.patch_embed.proj.weight", "backbone.norm0.weight"],
}
SIZE = (64, 96)  # H, W of the batch: a 16x24 logit map, resized x4 to the labels


def batch(seed: int, num_classes: int):
    import numpy as np
    rng = np.random.default_rng(seed)
    H, W = SIZE
    # smooth colours plus noise: features that are not all alike
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    pixels = np.empty((2, H, W, 3), np.uint8)
    for b in range(2):
        base = np.stack([80 + 120 * xx / W, 60 + 150 * yy / H, 200 - 100 * (xx + yy) / (H + W)], -1)
        pixels[b] = np.clip(base + rng.normal(0, 25, (H, W, 3)), 0, 255).astype(np.uint8)
    # 8x8 blocks of classes, a band and a corner of ignored pixels
    blocks = rng.integers(0, num_classes, (2, H // 8, W // 8))
    labels = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2).astype(np.uint8)
    labels[0, 20:27, :] = 255
    labels[1, :, 70:] = 255
    labels[1, :9, :13] = 255
    return pixels, labels


def _dcn_backward(input, weight, bias, offset, grad_output, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, deformable_group, im2col_step):
    """The authors' compiled DCN backward replaced, as their forward is by the tool, by torchvision's
    ``deform_conv2d`` (its autograd gives the gradients of input, offset, weight and bias)."""
    import torch
    import torchvision
    assert group == 1 and deformable_group == 1
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (input, offset, weight, bias)]
        out = torchvision.ops.deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], stride=(stride_h, stride_w),
                                            padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w))
        grad_input, grad_offset, grad_weight, grad_bias = torch.autograd.grad(out, leaves, grad_output)
    return grad_input, grad_offset, grad_weight, grad_bias


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="the reference tool's WORK folder (LIT/, site/)")
    ap.add_argument("--tool", required=True, help="the reference tool's folder (lit_compat.py, make_fixtures.py)")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    args = ap.parse_args()
    seg_tree = osp.join(args.work, "LIT", "segmentation")
    sys.path[:0] = [osp.join(args.work, "site"), args.tool, seg_tree, REPO, osp.join(REPO, "tests")]
    os.chdir(seg_tree)
    import numpy as np
    import torch
    import torch.nn as nn
    torch.set_num_threads(2)
    import lit_compat
    lit_compat.install()
    sys.modules["DCN"].deform_conv2d_backward = _dcn_backward  # the tool stubs the forward only
    import make_fixtures
    make_fixtures.register_tiny_ti("seg")
    from mmcv import Config
    from mmseg.models import build_segmentor
    from test_official_dense import Fixture

    def quiet(model):
        """Train mode, but dropout and drop path off (deterministic)."""
        model.train()
        for m in model.modules():
            if type(m).__name__ in ("Dropout", "Dropout2d", "DropPath"):
                m.eval()

    names = [n for n in GRAD_KEYS if not args.only or n in args.only.split(",")]
    for name in names:
        fx = Fixture(name)
        meta = fx.meta()
        cfg = Config.fromstring(meta["config"], ".py")
        sd = fx.state_dict()
        num_classes = sd["decode_head.conv_seg.weight"].shape[0]
        model = build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
        model.load_state_dict(sd, strict=True)
        quiet(model)
        pixels, labels = batch(17 if name.endswith("ti") else 18, num_classes)
        norm = cfg.img_norm_cfg
        mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1)
        img = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - mean) / std
        gt = torch.from_numpy(labels).long()[:, None]
        H, W = SIZE
        metas = [dict(img_shape=(H, W, 3), ori_shape=(H, W, 3), pad_shape=(H, W, 3), flip=False,
                      scale_factor=1.0, img_norm_cfg=dict(norm)) for _ in range(2)]
        losses = model.forward_train(img, metas, gt)
        loss, acc = losses["decode.loss_seg"], losses["decode.acc_seg"]
        loss.backward()
        params = dict(model.named_parameters())
        out = dict(pixels=pixels, labels=labels, loss=np.float64(loss.item()), acc=np.float64(float(acc)))
        for k in GRAD_KEYS[name]:
            out[f"grad/{k}"] = params[k].grad.detach().numpy().astype(np.float32)
        out["grad_norm"] = np.float64(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params.values()
                                                     if p.grad is not None)).item())
        # the initialisation of the neck and head at the paper's widths
        icfg = Config.fromstring(meta["config"], ".py")
        icfg.model.neck.out_channels = 256
        icfg.model.decode_head.in_channels = [256] * 4
        icfg.model.decode_head.channels = 128
        torch.manual_seed(0)
        fresh = build_segmentor(icfg.model, train_cfg=icfg.get("train_cfg"), test_cfg=icfg.get("test_cfg"))
        init = {}
        for mname, m in fresh.named_modules():
            if not mname.startswith(("neck.", "decode_head.")):
                continue
            if isinstance(m, nn.Conv2d) or isinstance(m, nn.modules.batchnorm._BatchNorm):
                w = m.weight.detach().double()
                init[mname] = dict(type=type(m).__name__, shape=list(w.shape), std=w.std().item(),
                                   mean=w.mean().item(), max_abs=w.abs().max().item(),
                                   bias_max_abs=None if m.bias is None else m.bias.detach().abs().max().item())
        record = dict(release=name, size=list(SIZE), mean=list(norm.mean), std=list(norm.std),
                      grad_keys=GRAD_KEYS[name], init=init,
                      init_rule="mmseg 0.13's EncoderDecoder.init_weights calls backbone.init_weights and "
                                "decode_head.init_weights only (not the neck's xavier init_weights): every "
                                "ConvModule keeps mmcv's construction-time kaiming_normal (fan_out, relu, bias "
                                "0), BatchNorms weight 1 bias 0, conv_seg normal(0, 0.01) bias 0",
                      mmseg_loss="decode.loss_seg: F.cross_entropy(reduction='none', ignore_index=255) on the "
                                 "logits resized bilinearly (align_corners=False) to the labels, then .mean() "
                                 "over every pixel, ignored ones counting 0; x loss_weight 1.0. decode.acc_seg: "
                                 "100 * correct / every pixel (ignored ones counted, never correct)")
        out["record"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
        dst = osp.join(HERE, f"seg_train_{name}.npz")
        np.savez_compressed(dst, **out)
        print(f"{dst}: loss {loss.item():.8f} acc {float(acc):.4f} grad_norm {out['grad_norm']:.6g} "
              f"({osp.getsize(dst)} bytes)")


if __name__ == "__main__":
    main()
