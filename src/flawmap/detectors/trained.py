"""TrainedDetector: the base of the detectors with a trained network (FastFlow, RIAD).

It declares the training-loop hyperparameters, checks them, and holds the one call of the training loop
(``flawmap.components.training.train``) with what follows it (losses and report kept on the detector).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..base import BaseDetector
from ..components.precision import PRECISIONS, resolve_precision
from ..components.stopping import STOP_RULES
from ..components.training import LossFn, MapsFn, TrainReport, TrainSettings, fingerprint, train
from ..errors import ConfigError
from ..params import check_choice, check_range

log = logging.getLogger(__name__)


class TrainedDetector(BaseDetector):
    """A detector whose ``_fit`` trains a network with the shared loop; subclasses take these keyword-only
    parameters in ``__init__`` (the class attributes below are the rules of a subclass without them)."""

    epochs: int
    batch_size: int
    lr: float
    val_fraction: float
    patience: int
    precision: str
    checkpoint_dir: str | None
    seed: int
    weight_decay: float = 0.0
    min_delta: float = 0.0
    stop_on: str = "loss"
    map_tolerance: float = 0.05

    train_report: TrainReport  # not saved: timing of the last fit (seconds per epoch, resume point)

    def _check_train_params(self) -> None:
        """Validate the training-loop hyperparameters: ``epochs``, ``batch_size``, ``lr``, ``val_fraction``,
        ``patience``, ``seed``, ``min_delta``, ``map_tolerance``, ``stop_on``, ``precision``, ``checkpoint_dir``."""
        check_range("epochs", self.epochs, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("lr", self.lr, 0, 1, low_open=True)
        check_range("val_fraction", self.val_fraction, 0, 0.5)
        check_range("patience", self.patience, 0, None, integer=True)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("min_delta", self.min_delta, 0, 1)
        check_range("map_tolerance", self.map_tolerance, 0, 2)
        check_choice("stop_on", self.stop_on, STOP_RULES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            raise ConfigError(f"checkpoint_dir must be None or a folder path string; got {self.checkpoint_dir!r}")

    def _train(self, model: nn.Module, data: Any, loss_fn: LossFn, *, images: torch.Tensor, skip: tuple[str, ...],
               val_maps: MapsFn | None = None) -> None:
        """Train ``model`` on ``data`` with this detector's settings; a checkpoint is resumed only when its hash
        (the parameters but ``skip``, the settings and a fingerprint of ``images``) matches."""
        params = {k: v for k, v in self.get_params().items() if k not in skip}
        precision = resolve_precision(self.precision, self.device_)
        settings = TrainSettings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                 weight_decay=self.weight_decay, seed=self.seed, val_fraction=self.val_fraction,
                                 patience=self.patience, min_delta=self.min_delta, precision=precision,
                                 stop_on=self.stop_on, map_tolerance=self.map_tolerance,
                                 checkpoint_dir=self.checkpoint_dir, desc=f"{self.name}: train")
        log.info("%s: training in %s (precision=%r)", self.name, precision, self.precision)
        report = train(model, data, loss_fn, settings, device=self.device_, val_maps=val_maps,
                       config={"detector": self.name, **params, "data": fingerprint(images)})
        model.eval()
        self.train_losses_ = report.train_losses
        self.val_losses_ = report.val_losses
        self.train_report = report
