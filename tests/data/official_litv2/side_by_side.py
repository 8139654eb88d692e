"""Throughput of litvit's LITv2 against the authors' own model, in one process, interleaved.

    OFFICIAL_LITV2_WORK=WORK PYTHON tests/data/official_litv2/side_by_side.py [litv2_s|litv2_m] [ROUNDS]

Builds the authors' model from their code (through the shared tool's ``make_fixtures``, which
replaces their CUDA DCN by ``torchvision.ops.deform_conv2d``), copies its weights into litvit's
model, checks the logits agree, then times both on 2 threads, batch 16, 224 x 224, inference:
fp32 for both, bf16 autocast for litvit only (torchvision's CPU deform_conv2d has no bf16 kernel,
so the authors' model cannot run in bf16 on the CPU). Rounds alternate the variants so that a
change in machine load hits each alike; per-round ratios and their median are printed.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.environ.get("OFFICIAL_LITV2_TOOL", "/work/shared/tools/official-litv2"))
import make_fixtures as mf  # noqa: E402  (sets up the authors' code)

import litvit  # noqa: E402

YAML = {"litv2_s": "litv2-small.yaml", "litv2_m": "litv2-medium.yaml", "litv2_b": "litv2-base.yaml"}


def images_per_s(model, x, bf16, reps=2):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)  # warm-up
        best = min(_timed(model, x) for _ in range(reps))
    return x.shape[0] / best


def _timed(model, x):
    t = time.perf_counter()
    model(x)
    return time.perf_counter() - t


def main(name="litv2_s", rounds=5):
    torch.set_num_threads(2)
    theirs = mf.build_model(mf.cfg_for(YAML[name], [])).eval()
    ours = litvit.create_model(name).eval()
    ours.load_state_dict(litvit.models.checkpoint_filter_fn({"model": theirs.state_dict()}, ours))
    x = torch.randn(16, 3, 224, 224)
    with torch.no_grad():
        print(f"max |logits litvit - authors| fp32: {(ours(x[:2]) - theirs(x[:2])).abs().max().item():.2e}")
    runs = {"authors fp32": [], "litvit fp32": [], "litvit bf16": []}
    for _ in range(rounds):
        runs["authors fp32"].append(images_per_s(theirs, x, False))
        runs["litvit fp32"].append(images_per_s(ours, x, False))
        runs["litvit bf16"].append(images_per_s(ours, x, True))
    print(f"torch {torch.__version__}, 2 threads, batch 16, 224x224, {rounds} rounds")
    for k, v in runs.items():
        print(f"{k:13s} img/s median {statistics.median(v):6.1f}  all {' '.join(f'{a:.1f}' for a in v)}")
    ratio = [a / b for a, b in zip(runs["litvit fp32"], runs["authors fp32"])]
    gain = [a / b for a, b in zip(runs["litvit bf16"], runs["litvit fp32"])]
    print(f"litvit / authors fp32, per round: median {statistics.median(ratio):.2f}  "
          f"all {' '.join(f'{a:.2f}' for a in ratio)}")
    print(f"litvit bf16 / fp32, per round:    median {statistics.median(gain):.2f}  "
          f"all {' '.join(f'{a:.2f}' for a in gain)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "litv2_s", int(sys.argv[2]) if len(sys.argv) > 2 else 5)
