"""Autocast at the loss's boundary: the loss follows autocast's rules as `F.linear` does.

Inside ``torch.autocast(device_type, dtype=D)``, enabled for the device type of `hidden`, the
loss's matrix products run in D: `hidden`, `weight` and `bias` are cast to D when autocast would
cast them for `F.linear` (floating point, on that device type, not float64: autocast never casts
float64). The casts are differentiable, so every gradient reaches the tensor the caller passed,
in its dtype (an fp32 weight gets an fp32 gradient). The softmax statistics, the loss and the lse
are float32, as for 16-bit inputs outside autocast. Outside autocast nothing is cast.

The loss then runs with autocast disabled, so that no product is cast again inside it.
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts products to on `device_type`, or None when autocast is off there."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta")
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def cast_dtype(t: Tensor, amp: torch.dtype | None, device_type: str) -> torch.dtype:
    """The dtype `t` has after autocast's cast to `amp` (None: autocast off) on `device_type`."""
    if amp is None or not t.is_floating_point() or t.dtype == torch.float64 or t.device.type != device_type:
        return t.dtype
    return amp


@overload
def cast(t: Tensor, amp: torch.dtype | None, device_type: str) -> Tensor: ...
@overload
def cast(t: None, amp: torch.dtype | None, device_type: str) -> None: ...
def cast(t: Tensor | None, amp: torch.dtype | None, device_type: str) -> Tensor | None:
    """`t` cast as autocast would cast it for `F.linear` (differentiable), or `t` itself."""
    if t is None:
        return None
    dt = cast_dtype(t, amp, device_type)
    return t if dt == t.dtype else t.to(dt)
