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
* Checkpoint after every epoch in ``checkpoint_dir``: ``ckpt-<epoch>.safetensors`` (model,
  Adam state and best-so-far weights, flattened) + ``checkpoint.json`` (epoch, next RNG state as
  a list, config hash, losses, best validation loss). Each file is written to a temporary name and
  renamed (``os.replace``); the JSON is renamed last and names its tensors file, so a kill at any
  point leaves the previous complete checkpoint. A checkpoint is reused only when its config hash
  (all hyperparameters except ``epochs`` and ``checkpoint_dir``, plus a fingerprint of the
  training data) equals the current one.
* Validation (``val_fraction`` > 0): a seeded split of the training data; its loss is computed
  each epoch with a fixed generator. ``patience`` 0: never stops early. Two stopping rules
  (``stop_on``):
  - "loss": training stops after ``patience`` epochs without improvement and the best weights are
    restored at the end. An epoch improves when its validation loss is below
    ``best - min_delta * |best|`` (``min_delta`` relative, 0: any decrease).
  - "maps": for a loss that keeps falling without the detector changing (a flow's likelihood on features
    near a low-dimensional set can fall for ever), ``val_maps(model, batch)`` gives the anomaly maps of
    the held-out images and their loss from the same forward pass (one pass per epoch, not two); training
    stops after epoch e when they ranked their pixels nearly as at epoch
    e - ``patience``: :func:`rank_change` (1 - Spearman's rho over all held-out pixels) <= ``map_tolerance``.
    Scale-free (a map only matters through its ordering: AUROC, thresholds calibrated afterwards); the
    last weights are kept.
* Precision (``precision``): "float32", or autocast of the loss function to "bfloat16" / "float16"
  (float16 with dynamic loss scaling, ``torch.amp.GradScaler``, whose state is checkpointed). The
  model's parameters, the optimiser and the returned loss stay float32; which operations run in the
  lower precision is the loss function's business (FastFlow: the coupling subnets only).
  :func:`resolve_precision` is the one rule for "auto".
* Host syncs: the loss is accumulated on the device; it is read back (and checked to be finite)
  once per epoch, so a CUDA step never waits for the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, ModelFileError
from ..io import atomic_write
from ..progress import bar

log = logging.getLogger(__name__)

Data = Union[torch.Tensor, Mapping[str, torch.Tensor]]
LossFn = Callable[[nn.Module, Any, torch.Generator], torch.Tensor]
MapsFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]  # (model, B rows) -> (maps (B, ...), mean loss)

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = "flawmap-train-checkpoint"
CHECKPOINT_VERSION = 1
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


STOP_RULES = ("loss", "maps")


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


def check_train_params(det: Any) -> None:
    """Validate the training-loop hyperparameters of a trained detector (FastFlow, RIAD): ``epochs``,
    ``batch_size``, ``lr``, ``val_fraction``, ``patience``, ``seed``, ``checkpoint_dir`` (ConfigError)."""
    from ..params import check_choice, check_range

    check_range("epochs", det.epochs, 1, None, integer=True)
    check_range("batch_size", det.batch_size, 1, None, integer=True)
    check_range("lr", det.lr, 0, 1, low_open=True)
    check_range("val_fraction", det.val_fraction, 0, 0.5)
    check_range("patience", det.patience, 0, None, integer=True)
    check_range("seed", det.seed, 0, 2**63 - 1, integer=True)
    check_range("min_delta", getattr(det, "min_delta", 0.0), 0, 1)
    check_range("map_tolerance", getattr(det, "map_tolerance", 0.0), 0, 2)
    check_choice("stop_on", getattr(det, "stop_on", "loss"), STOP_RULES)
    if hasattr(det, "precision"):
        check_choice("precision", det.precision, PRECISIONS)
    if det.checkpoint_dir is not None and not isinstance(det.checkpoint_dir, str):
        raise ConfigError(f"checkpoint_dir must be None or a folder path string; got {det.checkpoint_dir!r}")


# ---- helpers -----------------------------------------------------------------------------------
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator of epoch ``epoch``: seeded by a hash of (seed, epoch), independent of history."""
    digest = hashlib.sha256(f"flawmap-train:{int(seed)}:{int(epoch)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


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


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state -> tensors {"optim.<param>.<key>"} + JSON (param groups, non-tensor state)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _model_tensors(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ---- checkpoints -------------------------------------------------------------------------------
@dataclass
class _Progress:
    """Loop state that a checkpoint restores (besides model and optimiser tensors)."""

    epoch: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] | None = None
    map_changes: list[float | None] = field(default_factory=list)
    recent_maps: list[torch.Tensor] = field(default_factory=list)  # stop_on="maps": the last patience + 1 (CPU)


def save_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, st: _Progress,
                    chash: str, seed: int, scaler: torch.amp.GradScaler | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _model_tensors(model, "model")
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    if st.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in st.best_state.items()})
    tensors.update({f"valmaps.{i}": m.contiguous() for i, m in enumerate(st.recent_maps)})
    name = f"ckpt-{st.epoch:06d}.safetensors"
    atomic_write(folder / name, lambda p: save_file(tensors, str(p), metadata={"config_hash": chash}))
    meta = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config_hash": chash,
        "epoch": st.epoch, "tensors": name,
        # state of the generator that epoch st.epoch (0-based, the next one) will use
        "rng_state": epoch_generator(seed, st.epoch).get_state().tolist(),
        "train_losses": st.train_losses, "val_losses": st.val_losses, "best_val_loss": st.best_val,
        "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs, "stopped_early": st.stopped_early,
        "map_changes": st.map_changes, "optimizer": opt_meta,
    }
    if scaler is not None:  # float16: the dynamic loss scale (floats and ints only)
        meta["grad_scaler"] = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in scaler.state_dict().items()}
    atomic_write(folder / CHECKPOINT_JSON, lambda p: p.write_text(json.dumps(meta)))
    for old in folder.glob("ckpt-*.safetensors"):  # tensors files no JSON points to any more
        if old.name != name:
            old.unlink(missing_ok=True)


def read_checkpoint(folder: Path, chash: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(meta, tensors) of the checkpoint in ``folder`` if it has config hash ``chash``, else None."""
    path = folder / CHECKPOINT_JSON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable training checkpoint ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{path}: not a flawmap training checkpoint (version {CHECKPOINT_VERSION})")
    if meta["config_hash"] != chash:
        log.warning("%s holds a checkpoint of another configuration or training set (hash %s, now %s): "
                    "training from scratch and overwriting it", folder, meta["config_hash"], chash)
        return None
    try:
        tensors = load_file(str(folder / meta["tensors"]))
    except Exception as exc:  # noqa: BLE001 - safetensors error types, OSError
        raise ModelFileError(f"{folder / meta['tensors']}: unreadable checkpoint tensors ({exc})") from None
    return meta, tensors


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


def train(model: nn.Module, data: Data, loss_fn: LossFn, settings: TrainSettings, *,
          config: Mapping[str, Any], device: torch.device, val_maps: MapsFn | None = None) -> TrainReport:
    """Train ``model`` (already on ``device``) in place; returns a :class:`TrainReport`.
    ``val_maps``: the held-out anomaly maps, required by ``settings.stop_on == "maps"``."""
    s = settings
    n = data_len(data)
    train_idx, val_idx = split_validation(n, s.val_fraction, s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    if s.precision not in PRECISIONS[1:]:
        raise ConfigError(f"precision={s.precision!r}; allowed: {', '.join(PRECISIONS[1:])} (resolve 'auto' first)")
    if s.stop_on not in STOP_RULES:
        raise ConfigError(f"stop_on={s.stop_on!r}; allowed: {', '.join(STOP_RULES)}")
    by_maps = s.stop_on == "maps" and s.patience > 0 and len(val_idx) > 0  # the maps rule is in force
    if by_maps and val_maps is None:
        raise ConfigError("stop_on='maps' needs the detector's val_maps function")
    scaler = torch.amp.GradScaler(device.type) if s.precision == "float16" else None
    stop_fields = (("stop_on", s.stop_on), ("map_tolerance", s.map_tolerance)) if by_maps else ()
    extra = {k: v for k, v in (("min_delta", s.min_delta), ("precision", s.precision), *stop_fields)
             if v != getattr(TrainSettings, k)}  # defaults: hash as before
    chash = config_hash({**config, "seed": s.seed, "batch_size": s.batch_size, "lr": s.lr,
                         "weight_decay": s.weight_decay, "val_fraction": s.val_fraction, "patience": s.patience,
                         **extra})
    folder = Path(s.checkpoint_dir) if s.checkpoint_dir else None
    st = _Progress()
    ckpt = read_checkpoint(folder, chash) if folder else None
    if ckpt is not None:
        meta, tensors = ckpt
        if meta["epoch"] > s.epochs and not meta["stopped_early"]:
            log.warning("%s: checkpoint is at epoch %d > epochs=%d: training from scratch", folder, meta["epoch"], s.epochs)
        else:
            model.load_state_dict(_strip(tensors, "model"), strict=True)
            opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
            if scaler is not None and "grad_scaler" in meta:
                scaler.load_state_dict(meta["grad_scaler"])
            best = _strip(tensors, "best")
            maps = _strip(tensors, "valmaps")
            st = _Progress(meta["epoch"], meta["train_losses"], meta["val_losses"], meta["best_val_loss"],
                           meta["best_epoch"], meta["bad_epochs"], meta["stopped_early"], best or None,
                           meta.get("map_changes", []), [maps[str(i)] for i in range(len(maps))])
            if meta["rng_state"] != epoch_generator(s.seed, st.epoch).get_state().tolist():
                raise ModelFileError(f"{folder}: the stored RNG state does not match the one derived from "
                                     f"(seed={s.seed}, epoch={st.epoch}); delete the checkpoint to retrain")
            log.info("%s: resuming from %s after epoch %d", s.desc, folder, st.epoch)
    report = TrainReport(resumed_from=st.epoch)
    n_batches = math.ceil(len(train_idx) / s.batch_size)
    remaining = 0 if st.stopped_early else max(0, s.epochs - st.epoch)
    pbar = bar(s.desc, total=remaining * n_batches, unit="batch")
    try:
        while st.epoch < s.epochs and not st.stopped_early:
            t0 = time.perf_counter()
            g = epoch_generator(s.seed, st.epoch)
            order = train_idx[torch.randperm(len(train_idx), generator=g)]
            model.train()
            total = torch.zeros((), device=device)  # summed on the device: no host sync per step
            for b in range(n_batches):
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
                raise FloatingPointError(f"{s.desc}: loss is {mean} in epoch {st.epoch + 1}; lower lr={s.lr}")
            pbar.set_postfix(epoch=st.epoch + 1, loss=f"{mean:.4g}")
            st.epoch += 1
            st.train_losses.append(mean)
            msg = f"{s.desc}: epoch {st.epoch}/{s.epochs} loss {st.train_losses[-1]:.5g}"
            if len(val_idx):
                if by_maps:
                    maps, v = _val_maps(model, data, val_idx, val_maps, s.batch_size, device, s.precision)  # type: ignore[arg-type]
                else:
                    v = _mean_loss(model, data, val_idx, loss_fn, s.batch_size, device, s.seed, s.precision)
                st.val_losses.append(v)
                msg += f" val {v:.5g}"
                if by_maps:  # ranking of the held-out pixels now vs `patience` epochs ago
                    st.recent_maps = [*st.recent_maps, maps][-(s.patience + 1):]
                    change = rank_change(st.recent_maps[-1], st.recent_maps[0]) if len(st.recent_maps) > s.patience else None
                    st.map_changes.append(change)
                    st.best_epoch, st.stopped_early = st.epoch, change is not None and change <= s.map_tolerance
                    msg += "" if change is None else f" map change {change:.4f}"
                elif improves(v, st.best_val, s.min_delta):
                    st.best_val, st.best_epoch, st.bad_epochs = v, st.epoch, 0
                    st.best_state = _strip(_model_tensors(model, "m"), "m")
                else:
                    st.bad_epochs += 1
                    st.stopped_early = s.patience > 0 and st.bad_epochs >= s.patience
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
