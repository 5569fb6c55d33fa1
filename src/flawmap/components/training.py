"""The one explicit training loop of the trained detectors (FastFlow, RIAD): no framework.

    report = train(model, data, loss_fn, TrainSettings(epochs=..., batch_size=..., lr=...),
                   config={...}, device=dev)

* ``data``: a tensor (N, ...) or a dict of tensors sharing the first dimension N; batches are
  index selections moved to ``device``.
* ``loss_fn(model, batch, generator) -> scalar loss``: any randomness (e.g. RIAD's masks) must be
  drawn from ``generator``; the loop never touches the global RNG.
* Optimiser: Adam (both papers use it) with ``lr`` and L2 ``weight_decay``.
* Determinism: epoch ``e`` shuffles and draws from a generator seeded by hash(seed, e), so a run
  resumed from the checkpoint written after epoch ``e`` continues bit-for-bit like an
  uninterrupted run (same device and library versions).
* Checkpoint after every epoch in ``checkpoint_dir`` (``flawmap.components.checkpoint``): ``ckpt-<epoch>.safetensors`` (model,
  Adam state and best-so-far weights, flattened) + ``checkpoint.json`` (epoch, next RNG state as
  a list, config hash, losses, best validation loss). Each file is written to a temporary name and
  renamed (``os.replace``); the JSON is renamed last and names its tensors file, so a kill at any
  point leaves the previous complete checkpoint. A checkpoint is reused only when its config hash
  (all hyperparameters except ``epochs`` and ``checkpoint_dir``, plus a fingerprint of the
  training data) equals the current one.
* Validation (``val_fraction`` > 0): a seeded split of the training data; its loss is computed
  each epoch with a fixed generator. ``patience`` 0: never stops early. Two stopping rules
  (``stop_on``, ``flawmap.components.stopping.StopRule``):
  - "loss": training stops after ``patience`` epochs without improvement and the best weights are
    restored at the end. An epoch improves when its validation loss is below
    ``best - min_delta * |best|`` (``min_delta`` relative, 0: any decrease).
  - "maps": for a loss that keeps falling without the detector changing (a flow's likelihood on features
    near a low-dimensional set can fall for ever), ``val_maps(model, batch)`` gives the anomaly maps of
    the held-out images and their loss from the same forward pass (one pass per epoch, not two); training
    stops after epoch e when they ranked their pixels nearly as at epoch
    e - ``patience``: ``stopping.rank_change`` (1 - Spearman's rho over all held-out pixels) <= ``map_tolerance``.
    Scale-free (a map only matters through its ordering: AUROC, thresholds calibrated afterwards); the
    last weights are kept.
* Precision (``precision``): "float32", or autocast of the loss function to "bfloat16" / "float16"
  (float16 with dynamic loss scaling, ``torch.amp.GradScaler``, whose state is checkpointed). The
  model's parameters, the optimiser and the returned loss stay float32; which operations run in the
  lower precision is the loss function's business (FastFlow: the coupling subnets only).
  ``flawmap.components.precision.resolve_precision`` is the one rule for "auto".
* Host syncs: the loss is accumulated on the device; it is read back (and checked to be finite)
  once per epoch, so a CUDA step never waits for the host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import bar
from .checkpoint import LoopState, epoch_generator, resume, save_checkpoint
from .precision import PRECISIONS, autocast
from .stopping import STOP_RULES, StopRule

log = logging.getLogger(__name__)

Data = Union[torch.Tensor, Mapping[str, torch.Tensor]]
LossFn = Callable[[nn.Module, Any, torch.Generator], torch.Tensor]
MapsFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]  # (model, B rows) -> (maps (B, ...), mean loss)

_VAL_STREAM = 2**31 - 1  # "epoch" index of the validation split / validation loss generators


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.0
    patience: int = 0
    checkpoint_dir: str | None = None
    desc: str = "train"
    min_delta: float = 0.0  # relative improvement of the validation loss that counts (early stopping)
    precision: str = "float32"  # "float32", "bfloat16" or "float16" (resolve "auto" with resolve_precision)
    stop_on: str = "loss"  # early-stopping rule: "loss" (validation loss) or "maps" (held-out maps stable)
    map_tolerance: float = 0.05  # "maps": stop when rank_change(maps now, maps `patience` epochs ago) <= this


@dataclass
class TrainReport:
    """What happened: per-epoch mean losses and wall times, where training resumed and stopped."""

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # epochs run in this call only
    resumed_from: int = 0  # epochs already done when this call started (0: fresh)
    epochs_done: int = 0
    best_epoch: int | None = None  # 1-based epoch whose weights were kept (validation only)
    stopped_early: bool = False
    map_changes: list[float | None] = field(default_factory=list)  # stop_on="maps": rank_change per epoch


# ---- helpers -----------------------------------------------------------------------------------
def fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 (hex, 16 chars) of the shapes, dtypes and bytes of tensors: identifies training data."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_len(data: Data) -> int:
    if isinstance(data, torch.Tensor):
        return len(data)
    lens = {len(v) for v in data.values()}
    if len(lens) != 1:
        raise ConfigError(f"training data tensors differ in length: {sorted(lens)}")
    return lens.pop()


def take(data: Data, idx: torch.Tensor, device: torch.device) -> Data:
    """Rows ``idx`` of every tensor, on ``device``."""
    if isinstance(data, torch.Tensor):
        return data[idx.to(data.device)].to(device, non_blocking=True)
    return {k: v[idx.to(v.device)].to(device, non_blocking=True) for k, v in data.items()}


def split_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) -> (train indices, validation indices), both sorted."""
    if fraction <= 0:
        return torch.arange(n), torch.arange(0)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ConfigError(f"val_fraction={fraction} leaves no training image out of {n}; use a smaller fraction")
    perm = torch.randperm(n, generator=epoch_generator(seed, _VAL_STREAM))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# ---- the loop ----------------------------------------------------------------------------------
@torch.no_grad()
def _mean_loss(model: nn.Module, data: Data, idx: torch.Tensor, loss_fn: LossFn, batch_size: int,
               device: torch.device, seed: int, precision: str) -> float:
    """Mean loss over rows ``idx`` in eval mode, with the same generator every epoch."""
    model.eval()
    g = epoch_generator(seed, _VAL_STREAM + 1)
    total = torch.zeros((), device=device)
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        with autocast(precision, device):
            loss = loss_fn(model, take(data, b, device), g)
        total += loss.detach().float() * len(b)
    return float(total) / len(idx)


@torch.no_grad()
def _val_maps(model: nn.Module, data: Data, idx: torch.Tensor, maps_fn: MapsFn, batch_size: int,
              device: torch.device, precision: str) -> tuple[torch.Tensor, float]:
    """The anomaly maps of rows ``idx`` in eval mode, float32 on the CPU (len(idx), ...), and their mean loss
    (as :func:`_mean_loss`, from the same forward passes)."""
    model.eval()
    out = []
    total = torch.zeros((), device=device)
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        with autocast(precision, device):
            maps, loss = maps_fn(model, take(data, b, device))
        out.append(maps.float().cpu())
        total += loss.detach().float() * len(b)
    return torch.cat(out), float(total) / len(idx)


def _stop_rule(s: TrainSettings, has_validation: bool, val_maps: MapsFn | None) -> StopRule:
    """The checked precision and the stopping rule in force: "maps" needs held-out images, ``patience`` > 0
    and the detector's ``val_maps``; otherwise the validation loss decides."""
    if s.precision not in PRECISIONS[1:]:
        raise ConfigError(f"precision={s.precision!r}; allowed: {', '.join(PRECISIONS[1:])} (resolve 'auto' first)")
    if s.stop_on not in STOP_RULES:
        raise ConfigError(f"stop_on={s.stop_on!r}; allowed: {', '.join(STOP_RULES)}")
    by_maps = s.stop_on == "maps" and s.patience > 0 and has_validation  # the maps rule is in force
    if by_maps and val_maps is None:
        raise ConfigError("stop_on='maps' needs the detector's val_maps function")
    return StopRule("maps" if by_maps else "loss", s.patience, s.min_delta, s.map_tolerance)


def _settings_hash(config: Mapping[str, Any], s: TrainSettings, rule: StopRule) -> str:
    """The hash a checkpoint must carry to be resumed: ``config`` and every setting but epochs and folder."""
    stop_fields = (("stop_on", s.stop_on), ("map_tolerance", s.map_tolerance)) if rule.by_maps else ()
    extra = {k: v for k, v in (("min_delta", s.min_delta), ("precision", s.precision), *stop_fields)
             if v != getattr(TrainSettings, k)}  # defaults: hash as before
    return config_hash({**config, "seed": s.seed, "batch_size": s.batch_size, "lr": s.lr,
                        "weight_decay": s.weight_decay, "val_fraction": s.val_fraction, "patience": s.patience,
                        **extra})


def _train_epoch(model: nn.Module, data: Data, train_idx: torch.Tensor, loss_fn: LossFn, opt: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler | None, s: TrainSettings, epoch: int, device: torch.device,
                 pbar: Any) -> float:
    """One pass over ``train_idx`` in an order drawn from epoch ``epoch``'s generator -> the mean loss."""
    g = epoch_generator(s.seed, epoch)
    order = train_idx[torch.randperm(len(train_idx), generator=g)]
    model.train()
    total = torch.zeros((), device=device)  # summed on the device: no host sync per step
    for b in range(math.ceil(len(train_idx) / s.batch_size)):
        idx = order[b * s.batch_size:(b + 1) * s.batch_size]
        with autocast(s.precision, device):
            loss = loss_fn(model, take(data, idx, device), g)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)  # skipped when the scaled gradients overflowed
            scaler.update()
        total += loss.detach().float() * len(idx)
        pbar.update(1)
    mean = float(total) / len(train_idx)  # the one host sync of the epoch
    if not math.isfinite(mean):
        raise FloatingPointError(f"{s.desc}: loss is {mean} in epoch {epoch + 1}; lower lr={s.lr}")
    pbar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4g}")
    return mean


def train(model: nn.Module, data: Data, loss_fn: LossFn, settings: TrainSettings, *,
          config: Mapping[str, Any], device: torch.device, val_maps: MapsFn | None = None) -> TrainReport:
    """Train ``model`` (already on ``device``) in place; returns a :class:`TrainReport`.
    ``val_maps``: the held-out anomaly maps, required by ``settings.stop_on == "maps"``."""
    s = settings
    train_idx, val_idx = split_validation(data_len(data), s.val_fraction, s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    rule = _stop_rule(s, len(val_idx) > 0, val_maps)
    scaler = torch.amp.GradScaler(device.type) if s.precision == "float16" else None
    chash = _settings_hash(config, s, rule)
    folder = Path(s.checkpoint_dir) if s.checkpoint_dir else None
    st = resume(folder, chash, model, opt, scaler, seed=s.seed, epochs=s.epochs) if folder else LoopState()
    if st.epoch:
        log.info("%s: resuming from %s after epoch %d", s.desc, folder, st.epoch)
    report = TrainReport(resumed_from=st.epoch)
    remaining = 0 if st.stopped_early else max(0, s.epochs - st.epoch)
    pbar = bar(s.desc, total=remaining * math.ceil(len(train_idx) / s.batch_size), unit="batch")
    try:
        while st.epoch < s.epochs and not st.stopped_early:
            t0 = time.perf_counter()
            st.train_losses.append(_train_epoch(model, data, train_idx, loss_fn, opt, scaler, s, st.epoch, device, pbar))
            st.epoch += 1
            msg = f"{s.desc}: epoch {st.epoch}/{s.epochs} loss {st.train_losses[-1]:.5g}"
            if len(val_idx):
                if rule.by_maps:
                    maps, v = _val_maps(model, data, val_idx, val_maps, s.batch_size, device, s.precision)  # type: ignore[arg-type]
                else:
                    maps, v = None, _mean_loss(model, data, val_idx, loss_fn, s.batch_size, device, s.seed, s.precision)
                st.val_losses.append(v)
                msg += f" val {v:.5g}" + rule.after_epoch(st, v, maps, model)
            report.epoch_seconds.append(time.perf_counter() - t0)
            log.info("%s (%.1f s)", msg, report.epoch_seconds[-1])
            if folder:
                save_checkpoint(folder, model, opt, st, chash, s.seed, scaler)
    finally:
        pbar.close()
    if st.best_state is not None:  # validation: keep the weights of the best epoch
        model.load_state_dict(st.best_state, strict=True)
    model.eval()
    report.train_losses, report.val_losses = list(st.train_losses), list(st.val_losses)
    report.epochs_done, report.best_epoch, report.stopped_early = st.epoch, st.best_epoch, st.stopped_early
    report.map_changes = list(st.map_changes)
    if st.stopped_early:
        log.info("%s: stopped early after epoch %d (best epoch %s)", s.desc, st.epoch, st.best_epoch)
    return report


M = TypeVar("M", bound=nn.Module)


def seeded_init(seed: int, build: Callable[[], M]) -> M:
    """Build a module with weights drawn from ``seed`` without changing the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()
