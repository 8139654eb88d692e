"""What the model's forward may ask about the way it is being run: tracing, exporting, autocast.

Every question is answered in a way that torch.compile (dynamo), torch.fx and the exporters can
trace without a graph break: the set of device types that have autocast is found once at import,
so the forward never calls ``torch.amp.is_autocast_available`` (a C function older dynamo skips);
``torch.is_autocast_enabled`` / ``torch.get_autocast_dtype`` are constant-folded by dynamo.

The one private API used here (the active dispatch mode, for FakeTensorMode / FlopCounterMode) is
looked up once and treated as absent where a torch build lacks it.
"""
import contextlib
from typing import Any, ContextManager, Optional

import torch

__all__ = ["is_exporting", "is_tracing", "is_fx_proxy", "autocast_dtype", "autocast_off", "AUTOCAST_DEVICE_TYPES"]

try:  # private, present in every torch this package supports; absent means "no dispatch mode"
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # pragma: no cover - depends on the torch build
    def _get_current_dispatch_mode() -> Any:
        return None


def _autocast_device_types() -> frozenset:
    kinds = set()
    for kind in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "ipu", "privateuseone"):
        try:
            if torch.amp.is_autocast_available(kind):
                kinds.add(kind)
        except (RuntimeError, AttributeError):
            pass
    return frozenset(kinds)


#: device types autocast exists for in this torch build (``meta`` has none)
AUTOCAST_DEVICE_TYPES = _autocast_device_types()


def is_exporting() -> bool:
    """True while torch.export / ONNX export / TorchScript tracing run. Sizes are symbolic then: no
    branch may depend on them."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def is_tracing() -> bool:
    """True while torch.compile or an exporter traces, or a dispatch mode (FakeTensorMode,
    FlopCounterMode) is active: caches are bypassed then and fused private kernels are not used,
    so a traced graph computes everything from the parameters with the plain ops."""
    return torch.compiler.is_compiling() or is_exporting() or _get_current_dispatch_mode() is not None


def is_fx_proxy(*values: Any) -> bool:
    """True if any value is a ``torch.fx.Proxy``: torch.fx symbolic tracing is running and Python
    control flow on it (``if``, ``==`` on sizes) would fail."""
    return any(isinstance(v, torch.fx.Proxy) for v in values)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``device_type``, or None where it is off or absent."""
    if device_type in AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_off(device_type: str) -> ContextManager:
    """A context with autocast disabled on ``device_type`` (a no-op where it has no autocast)."""
    if device_type in AUTOCAST_DEVICE_TYPES:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
