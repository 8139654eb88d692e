#!/usr/bin/env python
"""Regenerate the fixtures of ``tests/test_official_dense.py`` with the LIT authors' own code.

Runs the project's reference tool ``official-dense`` (``make_fixtures.py``: the authors' vendored
mmdet 2.11 / mmseg 0.13 on CPU, their compiled ops replaced by torchvision's) once per variant
below, with the variant's seed, widths, depths, heads, number of classes, test scale and input
image, and then keeps a small part of what it records in one ``VARIANT.npz`` per variant:

* the release file's content: ``meta`` (the config text, classes, palette, versions: what mmcv's
  ``save_checkpoint`` writes) and the state dict, whose floats are 6-bit (``k * 2**e``, ``|k| <=
  31``, one ``e`` per tensor; the weights are rounded so *before* the authors' code runs, so
  the recorded outputs are those of exactly these weights);
* the input image (its JPEG or PNG bytes) and what the authors' pipeline made of it (metas, a
  SHA-256 of the exact network input);
* every recorded stage, spatially subsampled to about a hundred numbers (at least four positions
  of every channel), with float64 ``[sum, sum|x|, sum x^2, min, max]`` of the full tensor; the
  first proposals and their RoI logits, final detections, masks (row-major run lengths), label
  maps.

mmdet 2.11 gives no mask to a detection whose box ends at ``y = 0`` (its per-class mask list is
then shorter than its box list); such detections get an empty mask in the recorded result, and
are listed in the fixture (``empty_masks``).

Usage (after the tool's ``setup.sh WORK OFFICIAL_LIT``; ``OFFICIAL_LIT_GIT``, the bare git dir, only
adds the authors' commit to the releases' version string)::

    python tests/data/official_dense/generate.py --work WORK --tool ../shared/tools/official-dense \
        [--only NAME,NAME]

The test suite reads the ``.npz`` files with numpy and torch only (no mmcv, mmdet, cv2).
"""
import argparse
import hashlib
import io
import json
import math
import os
import os.path as osp
import subprocess
import sys

HERE = osp.dirname(osp.abspath(__file__))

# name -> the tool's model it varies, and what is changed. LIT-Ti's heads are fixed by the authors'
# class (1, 2, 5, 8); LIT-S's come from the config (``num_heads``). ``scale`` is the test
# MultiScaleFlipAug img_scale written into the release's config.
VARIANTS = {
    'retinanet_lit_ti': dict(
        base='retinanet_lit_ti', seed=17001, dims=[4, 8, 10, 16], depths=[1, 2, 1, 1], classes=10,
        scale=(1333, 800), image=dict(w=200, h=150, seed=1, fmt='jpeg'),
        tiny=dict(fpn_out=8, retina_feat=8, retina_stacked=2)),
    'retinanet_lit_s': dict(
        base='retinanet_lit_s', seed=17002, dims=[4, 8, 16, 32], heads=[1, 2, 1, 2], mlp_ratio=2.0,
        depths=[1, 1, 2, 1], classes=12, scale=(400, 240), image=dict(w=120, h=160, seed=2, fmt='png'),
        tiny=dict(fpn_out=8, retina_feat=8, retina_stacked=3)),
    'mask_rcnn_lit_ti': dict(
        base='mask_rcnn_lit_ti', seed=17003, dims=[4, 8, 10, 16], depths=[2, 1, 1, 1], classes=3,
        scale=(320, 256), image=dict(w=170, h=128, seed=3, fmt='jpeg'),
        tiny=dict(fpn_out=8, rpn_feat=8, fc_out=16, mask_conv=8)),
    'mask_rcnn_lit_s': dict(
        base='mask_rcnn_lit_s', seed=17004, dims=[4, 8, 16, 32], heads=[3, 6, 1, 1], mlp_ratio=1.5,
        depths=[1, 2, 1, 1], classes=9, scale=(288, 352), image=dict(w=144, h=112, seed=4, fmt='png'),
        tiny=dict(fpn_out=8, rpn_feat=8, fc_out=16, mask_conv=8)),
    'sem_fpn_lit_ti': dict(
        base='sem_fpn_lit_ti', seed=17005, dims=[4, 8, 10, 16], depths=[1, 1, 2, 1],
        scale=(2048, 512), image=dict(w=150, h=113, seed=5, fmt='jpeg'),
        tiny=dict(fpn_out=8, semfpn_channels=8)),
    # a 196x256 image kept at its size: LIT-Ti's stage-1 grid 64x49 has as many tokens as its 56x56
    # position table, which the authors then add unresized
    'sem_fpn_lit_ti_grid': dict(
        base='sem_fpn_lit_ti', seed=17007, dims=[4, 8, 10, 16], depths=[1, 1, 1, 1],
        scale=(256, 196), image=dict(w=196, h=256, seed=7, fmt='jpeg'),
        tiny=dict(fpn_out=8, semfpn_channels=8)),
    'sem_fpn_lit_s': dict(
        base='sem_fpn_lit_s', seed=17006, dims=[4, 8, 16, 32], heads=[3, 6, 2, 2], mlp_ratio=2.0,
        depths=[2, 1, 1, 1], scale=(1024, 288), image=dict(w=131, h=97, seed=6, fmt='png'),
        tiny=dict(fpn_out=8, semfpn_channels=8)),
}
KEEP = 128       # numbers kept per recorded map (spatial subsample, all channels)
ROWS = 16        # rows kept of proposal / RoI tables
MASKS = 24       # masks kept (run lengths), the first in the authors' result order
QMAX = 31        # weights are k * 2**e with |k| <= QMAX (6 bits)


# --------------------------------------------------------------------------------- input images
def make_image(w, h, seed):
    """A smooth RGB test image with flat shapes (numpy only: exact on every platform)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    t = (xx / max(w - 1, 1) * 0.6 + yy / max(h - 1, 1) * 0.4)[..., None]
    img = c0 * (1 - t) + c1 * t
    texture = 6 * np.sin(xx / rng.uniform(2, 5) + yy / rng.uniform(3, 7))[..., None]  # no flat region
    for _ in range(7):
        colour = rng.uniform(0, 255, 3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(w / 12, w / 4), rng.uniform(h / 12, h / 4)
        if rng.uniform() < 0.5:
            inside = (abs(xx - cx) <= rx) & (abs(yy - cy) <= ry)
        else:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        img[inside] = colour
    return np.clip(np.rint(img + texture), 0, 255).astype(np.uint8)


def write_image(spec, path):
    """Write the variant's image (PNG or JPEG bytes) to ``path``; return the bytes."""
    from PIL import Image
    arr = make_image(spec['w'], spec['h'], spec['seed'])
    buf = io.BytesIO()
    if spec['fmt'] == 'jpeg':
        Image.fromarray(arr).save(buf, format='JPEG', quality=90)
    else:
        Image.fromarray(arr).save(buf, format='PNG', compress_level=9)
    data = buf.getvalue()
    with open(path, 'wb') as f:
        f.write(data)
    return data


# --------------------------------------------------------------------------------- worker
def quantize_(model):
    """Round every floating parameter and buffer to ``k * 2**e`` with ``|k| <= QMAX``."""
    import torch
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point() and t.numel():
                m = t.abs().max().item()
                if m > 0:
                    s = 2.0 ** math.ceil(math.log2(m / QMAX))
                    t.copy_(torch.round(t / s) * s)


def worker(variant, out, tool):
    sys.path.insert(0, tool)
    import lit_compat
    lit_compat.install()
    import make_fixtures as mf
    spec = VARIANTS[variant]
    base = spec['base']
    model = dict(mf.MODELS[base])
    model['seed'] = spec['seed']
    model['dims'] = list(spec['dims'])
    mf.MODELS[base] = model
    mf.TINY.update(spec['tiny'], depths=list(spec['depths']))
    original_tiny_cfg = mf.tiny_cfg

    def tiny_cfg(s):
        cfg, official = original_tiny_cfg(s)
        m = cfg.model
        if 'heads' in spec:
            m.backbone.num_heads = list(spec['heads'])
        if 'mlp_ratio' in spec:
            m.backbone.mlp_ratio = spec['mlp_ratio']
        if 'classes' in spec:
            heads = [m.get('bbox_head')] + ([m.roi_head.bbox_head, m.roi_head.mask_head] if 'roi_head' in m else [])
            for h in heads:
                if h is not None:
                    h.num_classes = spec['classes']
        for pipeline in (cfg.data.test.pipeline, cfg.data.val.pipeline, cfg.test_pipeline):
            pipeline[1].img_scale = tuple(spec['scale'])
        return cfg, official

    mf.tiny_cfg = tiny_cfg
    if 'classes' in spec:
        from mmdet.datasets import CocoDataset
        CocoDataset.CLASSES = CocoDataset.CLASSES[:spec['classes']]
    import mmcv.runner
    original_save = mmcv.runner.save_checkpoint

    def save_checkpoint(model, filename, optimizer=None, meta=None):
        quantize_(model)
        return original_save(model, filename, optimizer=optimizer, meta=meta)

    mmcv.runner.save_checkpoint = save_checkpoint
    if model['tree'] == 'det':
        _keep_result_aligned(out)
    mf.main_worker(model['tree'], out, [base])


def _keep_result_aligned(out):
    """mmdet 2.11 gives no mask to a detection whose box ends at y = 0 (its per-class mask list is
    then shorter than its box list, which the tool cannot flatten): put an empty mask in its place
    and count them in ``OUT/empty_masks.json``."""
    import numpy as np
    import mmdet.apis
    from PIL import Image
    original = mmdet.apis.inference_detector

    def inference_detector(model, img):
        result = original(model, img)
        inserted = []
        if isinstance(result, tuple):
            shape = Image.open(img).size[::-1]
            for c, boxes in enumerate(result[0]):
                for j in np.flatnonzero(boxes[:, 3] == 0):
                    if len(result[1][c]) < len(boxes):
                        result[1][c].insert(int(j), np.zeros(shape, bool))
                        inserted.append([c, int(j)])
                assert len(result[1][c]) == len(boxes)
            with open(osp.join(out, 'empty_masks.json'), 'w') as f:
                json.dump(inserted, f)
        return result

    mmdet.apis.inference_detector = inference_detector


# --------------------------------------------------------------------------------- compaction
class Packer:
    """Arrays packed into a few flat buffers by dtype, with a JSON index."""

    def __init__(self):
        self.buffers = {}
        self.index = {}

    def add(self, key, array, kind=None):
        import numpy as np
        array = np.ascontiguousarray(array)
        kind = kind or str(array.dtype)
        buf = self.buffers.setdefault(kind, [])
        offset = sum(b.size for b in buf)
        buf.append(array.reshape(-1).astype(kind))
        self.index[key] = dict(kind=kind, offset=int(offset), shape=list(array.shape))

    def arrays(self):
        import numpy as np
        return {k: np.concatenate(v) if v else np.zeros(0, k) for k, v in self.buffers.items()}


def _subsample(stored, stored_stride):
    """Keep ``full[..., ::S, ::S]`` (S a multiple of the recorded stride): at most KEEP numbers, or
    four positions of every channel."""
    t = stored
    limit = max(KEEP, 4 * t.shape[1]) if t.dim() >= 3 else KEEP
    k = 1
    while t.dim() >= 3 and t[..., ::k, ::k].numel() > limit and t[..., ::k, ::k].shape[-2:].numel() > 1:
        k += 1
    return t[..., ::k, ::k].contiguous(), stored_stride * k


def compact(variant, root, image_bytes, dest):
    import numpy as np
    import torch
    from PIL import Image
    spec = VARIANTS[variant]
    base = spec['base']
    d = osp.join(root, base)
    ckpt = torch.load(osp.join(d, f'{base}.pth'), map_location='cpu', weights_only=False)
    exp = torch.load(osp.join(d, 'expected.pt'), map_location='cpu', weights_only=False)
    p = Packer()
    record = dict(variant=variant, spec={k: v for k, v in spec.items() if k != 'tiny'}, tiny=spec['tiny'],
                  top_keys=list(ckpt.keys()), state_dict=[], stages={}, values={})
    meta = dict(ckpt['meta'])
    meta['CLASSES'] = list(meta['CLASSES'])
    record['meta'] = meta
    for k, v in ckpt['state_dict'].items():
        v = v.detach()
        entry = dict(key=k, shape=list(v.shape), dtype=str(v.dtype).replace('torch.', ''))
        if v.is_floating_point():
            m = v.abs().max().item() if v.numel() else 0.0
            e = math.ceil(math.log2(m / QMAX)) if m > 0 else 0
            q = torch.round(v / 2.0 ** e)
            assert torch.equal(q * 2.0 ** e, v) and q.abs().max() <= QMAX, k  # rounded before the run
            entry['exp'] = e
            p.add('sd/' + k, q.numpy().astype(np.int8), 'int8')
        else:
            entry['values'] = v.reshape(-1).tolist()
        record['state_dict'].append(entry)
    p.add('image', np.frombuffer(image_bytes, np.uint8), 'uint8')
    decoded = np.array(Image.open(io.BytesIO(image_bytes)).convert('RGB'))
    record['image_shape'] = list(decoded.shape)
    # the exact network input, rebuilt from the recorded resized image (the tool checks it is exact)
    u8 = np.array(Image.open(io.BytesIO(exp['img_resized_png'].numpy().tobytes())).convert('RGB'))
    im = exp['img_meta']
    mean = torch.tensor(im['img_norm_cfg']['mean']).view(3, 1, 1)
    std = torch.tensor(im['img_norm_cfg']['std']).view(3, 1, 1)
    x = (torch.from_numpy(u8.copy()).permute(2, 0, 1).float() - mean) / std
    H, W = im['pad_shape'][:2]
    x = torch.nn.functional.pad(x, (0, W - x.shape[2], 0, H - x.shape[1]))[None]
    stored_img, s_img = exp['img'], exp['__strides__']['img']
    assert torch.equal(x[..., ::s_img, ::s_img], stored_img), 'network input not reproduced'
    record['img_sha256'] = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    record['img_meta'] = im
    for key, stats in exp['__stats__'].items():
        if key == 'img':  # checked exactly by its SHA-256
            record['stages'][key] = dict(full_shape=exp['__full_shapes__'][key], stats=stats.tolist())
            continue
        t, s = _subsample(exp[key], exp['__strides__'][key])
        p.add('stage/' + key, t.numpy(), 'float32')
        record['stages'][key] = dict(stride=s, full_shape=exp['__full_shapes__'][key], stats=stats.tolist())
    for key in ('det_bboxes', 'det_labels', 'result.mask_areas'):  # result.* is det_* sorted by label
        if key in exp:
            v = exp[key]
            p.add('value/' + key, v.numpy(), 'float32' if v.is_floating_point() else 'int64')
    if 'rpn.proposals' in exp:
        v = exp['rpn.proposals']
        p.add('value/rpn.proposals', v[:ROWS].numpy(), 'float32')
        d64 = v.double()
        record['values']['rpn.proposals'] = dict(rows=int(v.shape[0]), sum=d64.sum(0).tolist())
        for key in ('roi.cls_score_first200', 'roi.bbox_pred_first200'):
            p.add('value/' + key.replace('_first200', ''), exp[key][:ROWS].numpy(), 'float32')
        p.add('value/roi.bbox_feats', exp['roi.bbox_feats_first32'][:1].numpy(), 'float32')
        p.add('value/roi.mask_feats', exp['roi.mask_feats_first8'][:1, :, ::3, ::3].numpy(), 'float32')
        p.add('value/roi.mask_pred_of_label', exp['roi.mask_pred_of_label'][:2, ::2, ::2].numpy(), 'float32')
    if 'result.masks_runs' in exp:
        empty = osp.join(root, 'empty_masks.json')
        record['values']['empty_masks'] = json.load(open(empty)) if osp.exists(empty) else []
        runs = exp['result.masks_runs'][:MASKS]
        record['values']['mask_runs'] = [int(r.numel()) for r in runs]
        record['values']['mask_shape'] = exp['result.mask_shape']
        p.add('value/mask_runs', np.concatenate([r.numpy() for r in runs]) if runs else np.zeros(0),
              'int32')
    if 'result.label_map' in exp:
        p.add('value/label_map', exp['result.label_map'].numpy(), 'uint8')
    arrays = p.arrays()
    record['index'] = p.index
    arrays['record'] = np.frombuffer(json.dumps(record).encode(), np.uint8)
    np.savez_compressed(dest, **arrays)
    return os.path.getsize(dest)


# --------------------------------------------------------------------------------- driver
def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--work', required=True, help="the tool's setup.sh folder (LIT/, site/)")
    ap.add_argument('--tool', required=True, help='the official-dense tool folder')
    ap.add_argument('--out', default=None, help='raw outputs (default WORK/fixtures)')
    ap.add_argument('--dest', default=HERE, help='where the .npz files go')
    ap.add_argument('--only', default='')
    ap.add_argument('--worker', default=None)
    a = ap.parse_args()
    work, tool = osp.abspath(a.work), osp.abspath(a.tool)
    if a.worker:
        worker(a.worker, osp.abspath(a.out), tool)
        return
    out = osp.abspath(a.out or osp.join(work, 'fixtures'))
    names = [n for n in a.only.split(',') if n] or list(VARIANTS)
    for name in names:
        spec = VARIANTS[name]
        root = osp.join(out, name)
        os.makedirs(root, exist_ok=True)
        data = write_image(spec['image'], osp.join(root, 'input.jpg'))  # the tool reads this name
        tree = 'det' if not spec['base'].startswith('sem_fpn') else 'seg'
        env = dict(os.environ, OFFICIAL_DENSE_WORK=work, OMP_NUM_THREADS='2', MKL_NUM_THREADS='2',
                   PYTHONWARNINGS='ignore', PYTHONHASHSEED='0',
                   PYTHONPATH=os.pathsep.join([osp.join(work, 'site'), tool,
                                               osp.join(work, 'LIT', 'detection' if tree == 'det'
                                                        else 'segmentation')]))
        r = subprocess.run([sys.executable, osp.abspath(__file__), '--work', work, '--tool', tool,
                            '--out', root, '--worker', name],
                           cwd=osp.join(work, 'LIT', 'detection' if tree == 'det' else 'segmentation'), env=env)
        if r.returncode:
            sys.exit(f'{name}: the authors\' code failed (see above)')
        os.makedirs(a.dest, exist_ok=True)
        size = compact(name, root, data, osp.join(a.dest, f'{name}.npz'))
        print(f'{name}: {size:,} bytes', flush=True)


if __name__ == '__main__':
    main()
