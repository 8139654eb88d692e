"""Parameter groups of the optimizer (the authors' weight-decay and learning-rate rules)."""
from typing import Dict, List, Optional, Sequence

from torch import Tensor, nn

__all__ = ["param_groups", "describe_param_groups"]


def _no_weight_decay_names(model: nn.Module) -> set:
    """Full parameter names listed by ``no_weight_decay()`` of the model and of every submodule."""
    names = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            for n in fn():
                names.add(f"{prefix}.{n}" if prefix else n)
    return names


def param_groups(
        model: nn.Module,
        weight_decay: float,
        lr: Optional[float] = None,
        offset_lr_mult: float = 0.01,
        no_decay_keys: Optional[Sequence[str]] = None,
) -> List[dict]:
    """AdamW parameter groups with the authors' rules.

    ImageNet rules (``no_decay_keys=None``; the ``set_weight_decay`` of both official codebases):

    * no weight decay: parameters with ``ndim <= 1`` (norms, biases), names ending in ``.bias``,
      and every name returned by ``no_weight_decay()`` of the model or any submodule (prefixed
      with the submodule's path; a backbone inside a detector keeps its rules): LIT-Ti's class
      token, LIT-S/M/B's relative position tables (LIT-Ti's position embeddings *are* decayed);
    * the DTM offset predictors' *weights* (names containing ``conv_offset``, not exempt from
      decay) form their own decayed group ``offset`` at ``lr x offset_lr_mult``; their bias stays
      in ``no_decay`` at the full lr. With ``offset_lr_mult == 1`` there is no such group.

    Dense rules (``no_decay_keys`` a sequence, possibly empty; mmcv's ``paramwise_cfg.custom_keys``
    with ``decay_mult=0``): every parameter is decayed except those whose name contains one of
    the keys; offsets as above (``offset_lr_mult`` is 1.0 in every dense config).

    A group's lr is ``lr_mult`` times the peak lr, set as the group's own ``lr``: timm's
    schedulers then decay each group from its own base toward the one shared minimum, as the
    authors' runs did (a ``lr_scale`` would scale the minimum too).

    Args:
        model (nn.Module): the (unwrapped) model; frozen parameters are skipped.
        weight_decay (float): decay of the decayed groups.
        lr (float, optional): if given, each group's ``lr`` is set to ``lr * lr_mult`` (for an
            optimizer built outside the engine; :func:`~litvit.engine.fit` does not pass it: its
            groups take their lrs from the run plan, :meth:`~litvit.engine.plan.RunPlan.group_lr`).
        offset_lr_mult (float): the offset predictors' multiplier (0.01 in both ImageNet codebases).
        no_decay_keys (Sequence[str], optional): dense rules, see above.

    Returns:
        Up to three groups ``decay``, ``no_decay``, ``offset``, each with ``name``, ``params``,
        ``param_names``, ``weight_decay`` and ``lr_mult``; empty groups are left out.

    Examples::
        >>> import litvit
        >>> m = litvit.create_model('lit_ti', img_size=64, embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
        ...                         num_heads=(1, 1, 2, 4))
        >>> [(g['name'], g['lr_mult'], g['weight_decay']) for g in param_groups(m, 0.05)]
        [('decay', 1.0, 0.05), ('no_decay', 1.0, 0.0), ('offset', 0.01, 0.05)]
    """
    if no_decay_keys is None:
        nwd = _no_weight_decay_names(model)
        nwd_leaves = {n.rsplit(".", 1)[-1] for n in nwd}

        def exempt(name: str, p: Tensor) -> bool:
            return (p.ndim <= 1 or name.endswith(".bias") or name in nwd
                    or any(name.endswith("." + leaf) for leaf in nwd_leaves))
    else:
        keys = tuple(no_decay_keys)

        def exempt(name: str, p: Tensor) -> bool:
            return any(k in name for k in keys)
    groups: Dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = exempt(name, p)
        if no_decay:
            key = "no_decay"
        elif "conv_offset" in name and offset_lr_mult != 1.0:
            key = "offset"
        else:
            key = "decay"
        g = groups.setdefault(key, dict(name=key, params=[], param_names=[],
                                        weight_decay=0.0 if no_decay else weight_decay,
                                        lr_mult=offset_lr_mult if key == "offset" else 1.0))
        g["params"].append(p)
        g["param_names"].append(name)
    out = [groups[k] for k in ("decay", "no_decay", "offset") if k in groups]
    if lr is not None:
        for g in out:
            g["lr"] = lr * g["lr_mult"]
    return out


def describe_param_groups(groups: Sequence[dict], peak_lr: Optional[float] = None) -> List[dict]:
    """Plain values of :func:`param_groups` for printing: name, lr multiplier (and lr), weight
    decay, numbers of tensors and parameters, the first few names."""
    out = []
    for g in groups:
        d = dict(name=g["name"], lr_mult=g["lr_mult"], weight_decay=g["weight_decay"],
                 tensors=len(g["params"]), parameters=int(sum(p.numel() for p in g["params"])),
                 examples=list(g["param_names"][:4]))
        if peak_lr is not None:
            d["lr"] = peak_lr * g["lr_mult"]
        out.append(d)
    return out


