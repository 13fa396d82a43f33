"""Weight-only int8 for a draft model: each Linear's weights as int8 rows with one scale per output channel.

A draft token costs a read of every draft weight, and on a CPU that read (or the bf16 arithmetic a
CPU without bf16 instructions emulates) is the draft's whole cost; int8 rows halve the bytes and run
on torch's int8-weight kernel. Only drafts are quantised: the target verifies every draft exactly,
so a quantised draft can cost acceptance but never changes what is emitted.
"""

from __future__ import annotations

from typing import Any

import torch

QUANT_MODES = ("int8",)


class Int8Linear(torch.nn.Module):
    """`x @ (q * scale).T + bias` with `q` int8 `[out, in]` and `scale` `[out]` (symmetric, per output channel)."""

    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)  # int8; `.shape` is the Linear's
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        keep = None if bias is None else bias.detach().clone()
        return cls(q.contiguous(), scales.to(weight.dtype), keep)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def rows(self, ids: torch.Tensor) -> Int8Linear:
        """The layer restricted to output rows `ids` (a draft head over a vocabulary subset)."""
        bias = None if self.bias is None else self.bias[ids].contiguous()
        return Int8Linear(self.weight[ids].contiguous(), self.scales[ids].contiguous(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        scales = self.scales.to(x.dtype)
        if x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, scales)
        else:  # no int8-weight kernel assumed elsewhere: dequantise (correct, not faster)
            y = torch.nn.functional.linear(flat, self.weight.to(x.dtype)) * scales
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def quantize(model: Any, mode: str) -> int:
    """Replace every `nn.Linear` of `model` (the LM head included, untied from the embedding) in place;
    returns how many were replaced."""
    if mode not in QUANT_MODES:
        raise ValueError(f"draft quantisation must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear.from_weight(child.weight, child.bias))
                swapped += 1
    return swapped
