#!/usr/bin/env python
"""Record the authors' training losses for ``tests/test_dense_training.py`` (dev script, not run by the suite).

For each tiny detection release of ``generate.py`` (``VARIANT.npz``: the config text and the 6-bit
state dict the authors' code made), this script builds the model with the authors' own mmdet 2.11
(``build_detector`` on the release's config, read by mmcv), loads the same weights, puts it in
eval mode (the backbone's drop path off; nothing in the heads depends on the mode) and calls
``model.forward_train`` on one fixed batch of two images of different sizes, padded to a common
size, with a few boxes each (a small one, one at the border; masks for Mask R-CNN). It records
every loss (per level for the dense heads, as mmdet returns them), the total ``_parse_losses``
computes, and the gradients of the total with respect to a few head parameters.

Cases (``train_CASE.npz``):

* ``exact``: the release's train_cfg with every RandomSampler's ``num`` set above the number of
  candidates, so every positive and negative is taken and mmdet draws no random numbers;
* ``seeded`` (Mask R-CNN only): the release's own train_cfg, ``torch.manual_seed(SEED)`` before
  the call; the samplers draw with ``torch.randperm`` on the global CPU generator, in the order
  litvit draws too;
* ``ignore`` (RetinaNet LIT-Ti): ``ignore_iof_thr=0.5`` with one ignored box per image;
* ``empty`` (LIT-S): as ``exact`` (every sample taken), the second image without any box;
* ``options`` (LIT-S): other settings everywhere (``OPTIONS``: allowed_border 0, pos_weight,
  gt_max_assign_all off, neg_pos_ub, no ground truths as proposals, small RPN proposal budgets with
  min_bbox_size, other focal gamma / alpha, other loss weights), seeded as ``seeded``.

The ``exact`` records also hold mmdet's ``init_weights`` of the neck and each head, each called
right after ``torch.manual_seed(SEED + k)`` (k: the module's place in ``INIT``): the sum, sum of
absolute values and first values of every parameter it sets.

The batch is made from integers only (no RNG; exact everywhere): ``batch_image``,
``BATCH`` below; the test rebuilds it from the same code.

Usage (after the official-dense tool's ``setup.sh WORK OFFICIAL_LIT``)::

    python tests/data/official_dense/generate_train.py --work WORK --tool ../shared/tools/official-dense
"""
import argparse
import copy
import json
import os
import os.path as osp
import subprocess
import sys

HERE = osp.dirname(osp.abspath(__file__))
SEED = 1234
BIG = 10 ** 6  # sampler num above every candidate count: no random draw

# (img_shape h, w), boxes (x1, y1, x2, y2), labels; pad_shape = img_shape padded to a multiple of 32
BATCH = [
    dict(img_shape=(60, 90), boxes=[[5, 6, 40, 50], [60, 10, 68, 17], [70.5, 30.25, 89.5, 59.75], [20, 30, 52, 58]],
         labels=[1, 0, 2, 1], ignore=[[30, 0, 90, 45]]),
    dict(img_shape=(40, 50), boxes=[[2, 3, 30, 25], [35, 20, 49.75, 39.5], [10, 30, 16, 36]], labels=[0, 2, 1],
         ignore=[[20, 0, 50, 30]]),
]
RELEASES = {
    'retinanet_lit_ti': ['exact', 'ignore'],
    'retinanet_lit_s': ['exact', 'empty', 'options'],
    'mask_rcnn_lit_ti': ['exact', 'seeded'],
    'mask_rcnn_lit_s': ['exact', 'empty', 'options'],
}
# the ``options`` case: train_cfg keys merged into the release's, and the heads' loss configs
# (the config path in the authors' model -> litvit's loss_cfg key)
OPTIONS = {
    'retinanet': dict(
        train=dict(assigner=dict(pos_iou_thr=0.45, min_pos_iou=0.2, gt_max_assign_all=False), allowed_border=0,
                   pos_weight=2.0),
        losses={('bbox_head', 'loss_cls', 'loss_cls'): dict(type='FocalLoss', use_sigmoid=True, gamma=1.5,
                                                           alpha=0.3, loss_weight=2.0),
                ('bbox_head', 'loss_bbox', 'loss_bbox'): dict(type='L1Loss', loss_weight=0.5)}),
    'mask_rcnn': dict(
        train=dict(rpn=dict(allowed_border=0, sampler=dict(num=64, neg_pos_ub=2)),
                   rpn_proposal=dict(nms_pre=50, max_per_img=30, nms=dict(type='nms', iou_threshold=0.5),
                                     min_bbox_size=4),
                   rcnn=dict(pos_weight=1.5, assigner=dict(gt_max_assign_all=False),
                             sampler=dict(num=128, pos_fraction=0.5, add_gt_as_proposals=False))),
        losses={('rpn_head', 'loss_cls', 'rpn_loss_cls'): dict(type='CrossEntropyLoss', use_sigmoid=True,
                                                               loss_weight=0.5),
                ('roi_head.bbox_head', 'loss_bbox', 'loss_bbox'): dict(type='L1Loss', loss_weight=2.0),
                ('roi_head.mask_head', 'loss_mask', 'loss_mask'): dict(type='CrossEntropyLoss', use_mask=True,
                                                                       loss_weight=3.0)}),
}


def _merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != 'rpn_proposal':
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base
# the modules whose mmdet init_weights() is recorded, and the parameters it sets
INIT = {
    'retinanet': ['neck', 'bbox_head'],
    'mask_rcnn': ['neck', 'rpn_head', 'roi_head.bbox_head', 'roi_head.mask_head'],
}
INIT_SKIP = ('roi_head.mask_head.convs.',)  # FCNMaskHead.init_weights leaves its ConvModules as they are
HEAD = 8  # first values kept per initialised parameter
GRADS = {
    'retinanet': ['bbox_head.retina_cls.weight', 'bbox_head.retina_cls.bias', 'bbox_head.retina_reg.weight',
                  'bbox_head.retina_reg.bias', 'neck.fpn_convs.0.conv.bias'],
    'mask_rcnn': ['rpn_head.rpn_cls.weight', 'rpn_head.rpn_reg.bias', 'roi_head.bbox_head.fc_cls.weight',
                  'roi_head.bbox_head.fc_reg.weight', 'roi_head.bbox_head.shared_fcs.1.bias',
                  'roi_head.mask_head.conv_logits.weight', 'roi_head.mask_head.upsample.bias',
                  'neck.fpn_convs.0.conv.bias'],
}


def pad32(n):
    return (n + 31) // 32 * 32


def batch_image():
    """(2, 3, H, W) float32 network input: integer patterns / 16 inside each image, 0 in the padding."""
    import numpy as np
    H = max(pad32(b['img_shape'][0]) for b in BATCH)
    W = max(pad32(b['img_shape'][1]) for b in BATCH)
    img = np.zeros((len(BATCH), 3, H, W), np.float32)
    for n, b in enumerate(BATCH):
        h, w = b['img_shape']
        c, i, j = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing='ij')
        img[n, :, :h, :w] = ((i * i * 7 + j * 13 + i * j * 3 + c * 29 + n * 5) % 61 - 30) / 16.0
    return img


def batch_boxes(case):
    """``BATCH``, without the second image's boxes for the ``empty`` case."""
    if case != 'empty':
        return BATCH
    return [BATCH[0], dict(BATCH[1], boxes=[], labels=[], ignore=[])]


def batch_masks(case='exact'):
    """Per image (n, pad_h, pad_w) uint8 masks: an ellipse inside each box (integer arithmetic)."""
    import numpy as np
    out = []
    for b in batch_boxes(case):
        ph, pw = pad32(b['img_shape'][0]), pad32(b['img_shape'][1])
        yy, xx = np.mgrid[0:ph, 0:pw]
        ms = []
        for x1, y1, x2, y2 in b['boxes']:
            cx2, cy2 = int(x1 + x2), int(y1 + y2)  # twice the centre
            rx, ry = max(int(x2 - x1), 1), max(int(y2 - y1), 1)  # twice the radii
            ms.append((((2 * xx + 1 - cx2) * ry) ** 2 + ((2 * yy + 1 - cy2) * rx) ** 2 <= (rx * ry) ** 2)
                      .astype(np.uint8))
        out.append(np.stack(ms) if ms else np.zeros((0, ph, pw), np.uint8))
    return out


def img_metas():
    return [dict(img_shape=(*b['img_shape'], 3), pad_shape=(pad32(b['img_shape'][0]), pad32(b['img_shape'][1]), 3),
                 ori_shape=(*b['img_shape'], 3), scale_factor=[1.0, 1.0, 1.0, 1.0], flip=False)
            for b in BATCH]


def train_cfg_for(cfg_text, case):
    """The train_cfg (a plain dict) of the release's config for one case."""
    from litvit.models.official_dense.config import parse_config
    cfg = parse_config(cfg_text)
    model = cfg.get('model') or {}
    tc = copy.deepcopy(model.get('train_cfg') or cfg.get('train_cfg'))
    if case in ('exact', 'empty'):
        for stage in (tc, tc.get('rpn'), tc.get('rcnn')):
            if stage and 'sampler' in stage:
                stage['sampler']['num'] = BIG
    if case == 'ignore':
        tc['assigner']['ignore_iof_thr'] = 0.5
    if case == 'options':
        _merge(tc, OPTIONS['retinanet' if 'rpn' not in tc else 'mask_rcnn']['train'])
    return tc


# --------------------------------------------------------------------------------- worker
def _roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width,
                        spatial_scale, sampling_ratio, pool_mode, aligned):
    """The backward the tool's CPU stubs lack: torchvision's (its forward is what the stub runs)."""
    import torch
    import torchvision
    if pool_mode != 1:
        raise NotImplementedError('roi_align backward: avg pooling only')
    with torch.enable_grad():
        x = torch.zeros_like(grad_input, requires_grad=True)
        out = torchvision.ops.roi_align(x, rois.to(x.dtype), (aligned_height, aligned_width),
                                        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                                        aligned=bool(aligned))
        grad, = torch.autograd.grad(out, x, grad_output)
    grad_input.copy_(grad)


def worker(name, case, tool, dest):
    import numpy as np
    import torch
    sys.path.insert(0, tool)
    import lit_compat
    lit_compat.install()
    import mmcv
    mmcv._ext.roi_align_backward = _roi_align_backward
    import make_fixtures as mf
    mf.register_tiny_ti('det')
    import mmcv
    from mmdet.models import build_detector
    sys.path[:0] = [osp.join(HERE, '..', '..', '..'), osp.join(HERE, '..', '..')]
    from test_official_dense import Fixture

    torch.set_num_threads(2)
    fx = Fixture(name)
    text = fx.record['meta']['config']
    cfg = mmcv.Config.fromstring(text, '.py')
    tc = mmcv.ConfigDict(train_cfg_for(text, case))
    kind = 'retinanet' if 'retina' in name else 'mask_rcnn'
    loss_cfg = {}
    if case == 'options':
        for (path, key, litvit_key), value in OPTIONS[kind]['losses'].items():
            node = cfg.model
            for part in path.split('.'):
                node = node[part]
            node[key] = mmcv.ConfigDict(value)
            loss_cfg[litvit_key] = value
    if 'train_cfg' in cfg.model:
        cfg.model.train_cfg = tc
        model = build_detector(cfg.model)
    else:
        model = build_detector(cfg.model, train_cfg=tc, test_cfg=cfg.get('test_cfg'))
    missing = model.load_state_dict(fx.state_dict(), strict=True)
    print(name, case, missing, flush=True)
    model.eval()
    for p in model.backbone.parameters():  # the authors' CPU-stubbed DCN has no backward; the heads' grads suffice
        p.requires_grad_(False)
    img = torch.from_numpy(batch_image())
    metas = img_metas()
    gt_bboxes = [torch.tensor(b['boxes'], dtype=torch.float32).view(-1, 4) for b in batch_boxes(case)]
    gt_labels = [torch.tensor(b['labels'], dtype=torch.long) for b in batch_boxes(case)]
    kwargs = {}
    if case == 'ignore':
        kwargs['gt_bboxes_ignore'] = [torch.tensor(b['ignore'], dtype=torch.float32) for b in BATCH]
    if kind == 'mask_rcnn':
        from mmdet.core import BitmapMasks
        kwargs['gt_masks'] = [BitmapMasks(m, m.shape[1], m.shape[2]) for m in batch_masks(case)]
    if case in ('seeded', 'options'):
        torch.manual_seed(SEED)
    losses = model.forward_train(img, metas, gt_bboxes, gt_labels, **kwargs)
    total, log_vars = model._parse_losses(losses)
    model.zero_grad()
    total.backward()
    params = dict(model.named_parameters())
    rec = dict(name=name, case=case, seed=SEED, big=BIG, train_cfg=train_cfg_for(text, case), loss_cfg=loss_cfg,
               losses={k: ([float(x.item()) for x in v] if isinstance(v, list) else float(v.mean().item()))
                       for k, v in losses.items()},
               log_vars={k: float(v) for k, v in log_vars.items()}, total=float(total.item()), grads=[])
    arrays = {}
    for key in GRADS[kind]:
        g = params[key].grad
        rec['grads'].append(dict(key=key, shape=list(g.shape), sum=float(g.double().sum()),
                                 abs_sum=float(g.double().abs().sum())))
        arrays['grad/' + key] = g.numpy().astype(np.float32)
    if case == 'exact':
        rec['init'] = []
        modules = dict(model.named_modules())
        for k, mod_name in enumerate(INIT[kind]):
            torch.manual_seed(SEED + k)
            module = modules[mod_name]
            module.init_weights()
            for pname, p in module.named_parameters():
                key = f'{mod_name}.{pname}'
                if key.startswith(INIT_SKIP):
                    continue
                v = p.detach().double()
                rec['init'].append(dict(key=key, module=mod_name, sum=float(v.sum()), abs_sum=float(v.abs().sum()),
                                        head=[float(x) for x in p.detach().reshape(-1)[:HEAD]]))
    arrays['record'] = np.frombuffer(json.dumps(rec).encode(), np.uint8)
    path = osp.join(dest, f'train_{name}_{case}.npz')
    np.savez_compressed(path, **arrays)
    print(f'{path}: {os.path.getsize(path):,} bytes; losses {rec["log_vars"]}', flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--work', required=True, help="the tool's setup.sh folder (LIT/, site/)")
    ap.add_argument('--tool', required=True, help='the official-dense tool folder')
    ap.add_argument('--dest', default=HERE)
    ap.add_argument('--only', default='')
    ap.add_argument('--worker', nargs=2, default=None)
    a = ap.parse_args()
    work, tool = osp.abspath(a.work), osp.abspath(a.tool)
    if a.worker:
        worker(a.worker[0], a.worker[1], tool, osp.abspath(a.dest))
        return
    env = dict(os.environ, OMP_NUM_THREADS='2', MKL_NUM_THREADS='2', PYTHONWARNINGS='ignore', PYTHONHASHSEED='0',
               PYTHONPATH=os.pathsep.join([osp.join(work, 'site'), tool, osp.join(work, 'LIT', 'detection')]))
    only = [n for n in a.only.split(',') if n]
    for name, cases in RELEASES.items():
        for case in cases:
            if only and name not in only and f'{name}_{case}' not in only:
                continue
            r = subprocess.run([sys.executable, osp.abspath(__file__), '--work', work, '--tool', tool,
                                '--dest', osp.abspath(a.dest), '--worker', name, case],
                               cwd=osp.join(work, 'LIT', 'detection'), env=env)
            if r.returncode:
                sys.exit(f"{name} {case}: the authors' code failed (see above)")


if __name__ == '__main__':
    main()
