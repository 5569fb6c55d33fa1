"""Checkpoints of the training loop (``flawmap.components.training``): one per epoch in ``checkpoint_dir``.

``ckpt-<epoch>.safetensors`` holds the model, the flattened Adam state, the best-so-far weights and the
recent held-out maps; ``checkpoint.json`` the epoch, the next epoch's RNG state, the config hash, the
losses and the stopping state (:class:`LoopState`). Both are written to a temporary name and renamed, the
JSON last, so a kill at any point leaves the previous complete checkpoint. :func:`resume` restores one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelFileError
from ..io import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = "flawmap-train-checkpoint"
CHECKPOINT_VERSION = 1


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator of epoch ``epoch``: seeded by a hash of (seed, epoch), independent of history."""
    digest = hashlib.sha256(f"flawmap-train:{int(seed)}:{int(epoch)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


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


def model_tensors(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


@dataclass
class LoopState:
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


def save_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, st: LoopState,
                    chash: str, seed: int, scaler: torch.amp.GradScaler | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = model_tensors(model, "model")
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


def resume(folder: Path, chash: str, model: nn.Module, opt: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler | None, *, seed: int, epochs: int) -> LoopState:
    """Where a run starts: the checkpoint in ``folder`` when it has config hash ``chash`` and is not past
    ``epochs`` (model, optimiser and loss scaler restored in place), else a fresh :class:`LoopState`."""
    ckpt = read_checkpoint(folder, chash)
    if ckpt is None:
        return LoopState()
    meta, tensors = ckpt
    if meta["epoch"] > epochs and not meta["stopped_early"]:
        log.warning("%s: checkpoint is at epoch %d > epochs=%d: training from scratch", folder, meta["epoch"], epochs)
        return LoopState()
    model.load_state_dict(strip(tensors, "model"), strict=True)
    opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scaler is not None and "grad_scaler" in meta:
        scaler.load_state_dict(meta["grad_scaler"])
    best = strip(tensors, "best")
    maps = strip(tensors, "valmaps")
    st = LoopState(meta["epoch"], meta["train_losses"], meta["val_losses"], meta["best_val_loss"],
                   meta["best_epoch"], meta["bad_epochs"], meta["stopped_early"], best or None,
                   meta.get("map_changes", []), [maps[str(i)] for i in range(len(maps))])
    if meta["rng_state"] != epoch_generator(seed, st.epoch).get_state().tolist():
        raise ModelFileError(f"{folder}: the stored RNG state does not match the one derived from "
                             f"(seed={seed}, epoch={st.epoch}); delete the checkpoint to retrain")
    return st
