"""The early-stopping rules of the training loop (``stop_on``), decided once per epoch by :class:`StopRule`.

* "loss": stop after ``patience`` epochs whose validation loss did not improve (:func:`improves`); the best
  epoch's weights are restored at the end.
* "maps": stop when the held-out anomaly maps rank their pixels nearly as ``patience`` epochs before
  (:func:`rank_change` <= ``map_tolerance``); the last weights are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import LoopState, model_tensors, strip

STOP_RULES = ("loss", "maps")


def improves(value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """The early-stopping test: a validation loss improves on ``best`` (None: nothing yet) when it is below
    ``best - min_delta * |best|`` (min_delta relative)."""
    return best is None or value < best - min_delta * abs(best)


def rank_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - Spearman's rank correlation between the values of ``a`` and ``b`` (same number of elements; ties
    broken by position): 0 when they order their elements identically, 1 for unrelated orders, 2 reversed."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().flatten().double().cpu()
        r = torch.empty_like(x)
        r[x.argsort(stable=True)] = torch.arange(len(x), dtype=torch.float64)
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    if ra.numel() != rb.numel() or ra.numel() < 2:
        raise ValueError(f"rank_change needs two tensors of the same size >= 2; got {a.numel()} and {b.numel()}")
    return float(1 - (ra * rb).sum() / (ra.norm() * rb.norm()))


@dataclass(frozen=True)
class StopRule:
    """The rule in force for one run: ``on`` "loss" or "maps" (see the module docstring)."""

    on: str
    patience: int
    min_delta: float = 0.0
    map_tolerance: float = 0.05

    @property
    def by_maps(self) -> bool:
        return self.on == "maps"

    def after_epoch(self, st: LoopState, val_loss: float, maps: torch.Tensor | None, model: nn.Module) -> str:
        """Record epoch ``st.epoch``'s validation loss (and held-out maps (N_val, ...) for "maps") in ``st``:
        best epoch, best weights, ``stopped_early``. Returns what the epoch's log line adds."""
        if self.by_maps:  # ranking of the held-out pixels now vs `patience` epochs ago
            assert maps is not None
            st.recent_maps = [*st.recent_maps, maps][-(self.patience + 1):]
            change = rank_change(st.recent_maps[-1], st.recent_maps[0]) if len(st.recent_maps) > self.patience else None
            st.map_changes.append(change)
            st.best_epoch, st.stopped_early = st.epoch, change is not None and change <= self.map_tolerance
            return "" if change is None else f" map change {change:.4f}"
        if improves(val_loss, st.best_val, self.min_delta):
            st.best_val, st.best_epoch, st.bad_epochs = val_loss, st.epoch, 0
            st.best_state = strip(model_tensors(model, "m"), "m")
        else:
            st.bad_epochs += 1
            st.stopped_early = self.patience > 0 and st.bad_epochs >= self.patience
        return ""
