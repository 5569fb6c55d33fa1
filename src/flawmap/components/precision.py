"""Arithmetic precision and memory layout of the trained networks (RIAD's U-Net, FastFlow's flows).

* Precision: :func:`resolve_precision` is the one rule for "auto" (bfloat16 where it is native, float16 on
  older CUDA GPUs, else float32); :func:`autocast` applies it.
* Layout: :func:`channels_last_helps` is the one rule for channels_last; :class:`Layout` applies it to a
  network's weights and activations (same maths either way).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def bf16_is_native(device: torch.device) -> bool:
    """True where bfloat16 matrix arithmetic is native: CUDA devices with bf16 support (Ampere and newer),
    CPUs with AMX-BF16 tiles (Sapphire Rapids and newer, where oneDNN convolutions run in bf16). Elsewhere
    bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x; absent: assume no AMX
    return device.type == "cpu" and bool(amx and amx())


def channels_last_helps(device: torch.device) -> bool:
    """The one layout rule of the trained networks (RIAD's U-Net, FastFlow's flows): channels_last on CUDA and
    on CPUs with AMX tiles (:func:`bf16_is_native`), where it was measured faster, contiguous on other CPUs,
    where it was measured slower (AMD EPYC, 1 thread: U-Net fwd + bwd 1.35x, FastFlow flows 1.035x)."""
    return device.type == "cuda" or bf16_is_native(device)


class Layout:
    """Mixin of the trained networks (RIAD's U-Net, FastFlow's flows): the memory layout of their weights and
    activations, same maths either way; set it with ``set_layout(channels_last_helps(device))``."""

    memory_format: torch.memory_format = torch.contiguous_format

    def set_layout(self, channels_last: bool) -> Any:
        """Weights and activations channels_last (True) or contiguous; returns the module."""
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return self.to(memory_format=self.memory_format)  # type: ignore[attr-defined]

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """x in this network's layout (a no-op when it already has it: the convolutions skip their reorders)."""
        return x.contiguous(memory_format=self.memory_format)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a training run uses: ``precision`` itself unless "auto", which is bfloat16 where
    :func:`bf16_is_native`, else float16 on CUDA (older GPUs, with loss scaling) and float32 on the CPU."""
    if precision != "auto":
        return precision
    if bf16_is_native(device):
        return "bfloat16"
    return "float16" if device.type == "cuda" else "float32"


def autocast(precision: str, device: torch.device) -> Any:
    """Context manager: autocast to ``precision`` on ``device`` ("float32": autocast off)."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])
