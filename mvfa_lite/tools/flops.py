"""Counting the arithmetic a piece of PyTorch code does, forward and backward apart.

torch's ``FlopCounterMode`` (matrix products, convolutions and attention by their dense
formulas, 2 FLOP per multiply-add) with two additions: the CPU flash-attention kernel that
``scaled_dot_product_attention`` runs on a CPU is counted like the GPU ones, and the operations
that run inside autograd's backward pass are also summed on their own.

This module imports torch only, so that ``compare-official`` can load it by file path in
the official code's Python as well: both programs are counted by the same code.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


_CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
}


class FlopCount(FlopCounterMode):
    """``with FlopCount() as count: ...`` then ``count.forward``, ``count.backward`` (FLOP)."""

    def __init__(self):
        super().__init__(display=False, custom_mapping=_CPU_ATTENTION)
        self.backward = 0

    def _count_flops(self, func_packet, out, args, kwargs):
        formula = self.flop_registry.get(func_packet)
        if formula is not None and torch._C._current_autograd_node() is not None:
            self.backward += formula(*args, **kwargs, out_val=out)
        return super()._count_flops(func_packet, out, args, kwargs)

    @property
    def total(self) -> int:
        return self.get_total_flops()

    @property
    def forward(self) -> int:
        return self.total - self.backward
