"""Export a fitted model folder to one self-contained ONNX file (``flawmap export``).

The graph is the detector's whole predict path: backbone, patch embedding, nearest-neighbour search
against the memory bank (PatchCore) / Mahalanobis distance to the per-position Gaussians (PaDiM) /
normalising flows (FastFlow), upsampling and Gaussian smoothing:

    images (N, 3, H, W) float32 in [0, 1]  ->  scores (N,) float32, maps (N, H, W) float32

N is dynamic; (H, W) is the model's preprocessing output size. The preprocessing (``Transform``) and
the calibration travel inside the file as JSON in the ONNX ``metadata_props`` entry ``flawmap`` (one
file: the graph and its metadata can never disagree or come apart). The graph is traced from the
detector's own code (``torch.onnx.export``, TorchScript tracing, opset 17), the function its
``traced_forward`` gives (the exportable methods: the registry's detectors with ``exportable``): PaDiM and FastFlow trace
their ``_predict`` as is; PatchCore its ``_score`` with the dense, loop-free ``knn.nearest_dense``
search (the pruned index of ``_predict`` is NumPy code). Before the file is written, the exported
graph is run with onnxruntime on probe images and compared with PyTorch.

SPADE and RIAD are not exported. SPADE's pixel search first picks the K nearest *training images* of
each test image and then scans only their feature maps, image by image in a Python loop over the
batch, in chunks: the graph would have to hold the gallery of every training feature map (hundreds of
MB to GB at the paper's resolution) and a per-image data-dependent gather. RIAD (U-Net inpainting with
fixed mask sets, MSGMS maps) has not been traced and tested, so it is not offered.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ConfigError, ModelFileError, OutputError
from ..io import atomic_write_bytes, check_writable
from ..registry import exportable_detectors
from .predictor import TorchPredictor
from .runtime import FORMAT, FORMAT_VERSION, METADATA_KEY, read_metadata

if TYPE_CHECKING:
    from ..base import BaseDetector

log = logging.getLogger(__name__)

EXPORTABLE = tuple(exportable_detectors())  # from the registry: the detectors with exportable = True
FORMATS = ("onnx",)
OPSET = 17
#: protobuf refuses messages over 2 GiB; the tensors of the graph must fit with room for the graph itself
MAX_TENSOR_BYTES = 2**31 - 2**26
CHECK_RTOL = 1e-3  # export-time check of onnxruntime against PyTorch (max error / max |value|)


class _Graph(nn.Module):
    """The predict path as one module: images (N, 3, H, W) -> (scores (N,), maps (N, H, W)).

    The detector's modules are registered here so that their weights become named graph initializers
    (and not gradient-carrying constants); its tensors (memory bank, Gaussians) are traced as constants."""

    def __init__(self, det: Any, forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({k.strip("_"): v for k, v in vars(det).items() if isinstance(v, nn.Module)})
        self.requires_grad_(False)
        self.eval()
        self._forward = forward

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = self._forward(images)
        return scores.float(), maps.float()


def graph_forward(det: BaseDetector) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The traceable predict function of a fitted detector: its own ``traced_forward``."""
    return det.traced_forward()


def tensor_bytes(det: Any) -> int:
    """Bytes of every tensor the graph holds: learned state and the detector's modules (backbone)."""
    seen = {id(t): t for t in det.state_tensors().values()}
    for v in vars(det).values():
        if isinstance(v, nn.Module):
            seen.update((id(t), t) for t in [*v.parameters(), *v.buffers()])
    return sum(t.numel() * t.element_size() for t in seen.values())


def check_export_target(out: str | Path, overwrite: bool = False) -> Path:
    """The rule for ``-o``: a path ending in .onnx; an existing file only with ``overwrite`` and only when
    it is a flawmap ONNX export; a writable folder. Raises OutputError (before any work is done)."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise OutputError(f"{out}: the output of --format onnx must end in .onnx (flawmap predict recognises an "
                          "exported model by it)")
    if out.is_symlink() or out.is_dir():
        raise OutputError(f"{out} exists and is not a file; refusing to replace it (choose another output path)")
    if out.exists():
        try:
            read_metadata(out)
        except ModelFileError:
            raise OutputError(f"{out} exists and is not a flawmap ONNX export; refusing to overwrite it "
                              "(nothing was changed; choose another output path)") from None
        if not overwrite:
            raise OutputError(f"{out} is already a flawmap ONNX export; pass --force to replace it")
    check_writable(out.parent)
    return out


def metadata(pred: TorchPredictor, source: Path) -> dict[str, Any]:
    """The JSON stored in the file's metadata_props (read back by ``runtime.read_metadata``)."""
    h, w = pred.transform.output_size
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "flawmap_version": __version__, "opset": OPSET,
            "method": pred.method, "params": pred.card["params"], "transform": pred.transform.to_dict(),
            "input_size": [h, w], "calibration": pred.card["calibration"], "source": str(source),
            "inputs": {"images": "(N, 3, H, W) float32 in [0, 1]"},
            "outputs": {"scores": "(N,) float32, raw, higher = more anomalous", "maps": "(N, H, W) float32"}}


def _trace(det: Any, probe: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: shapes other than the batch are constants, as intended
        torch.onnx.export(_Graph(det, graph_forward(det)), (probe,), buf,  # type: ignore[arg-type]  # a BytesIO
                          dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["scores", "maps"], do_constant_folding=True,
                          dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}})
    return buf.getvalue()


def _with_metadata(graph: bytes, meta: dict[str, Any]) -> bytes:
    import onnx

    model = onnx.load_from_string(graph)
    model.producer_name, model.producer_version = "flawmap", __version__
    model.doc_string = f"flawmap {meta['method']} anomaly detector: images (N, 3, H, W) in [0, 1] -> scores (N,), maps (N, H, W)"
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _check(data: bytes, pred: TorchPredictor, probe: np.ndarray, where: Path) -> None:
    """Run the exported graph with onnxruntime and compare it with the PyTorch model on the probe images."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(["scores", "maps"], {"images": probe})
    for name, g, ref in zip(("scores", "maps"), got, pred.raw(probe)):
        err = float(np.abs(g - ref).max() / max(float(np.abs(ref).max()), 1e-12)) if g.shape == ref.shape else np.inf
        if not err <= CHECK_RTOL:
            raise ModelFileError(f"{where}: export check failed: onnxruntime {name} {g.shape} differ from PyTorch "
                                 f"{ref.shape} by {err:.2e} (relative; allowed {CHECK_RTOL:g}); nothing was written")


def export_model(model: str | Path, out: str | Path, fmt: str = "onnx", *, overwrite: bool = False,
                 check: bool = True) -> Path:
    """Export the model folder ``model`` (``flawmap fit``) to ``out`` (.onnx); returns ``out``.

    The file appears in one step (``flawmap.io.atomic_write_bytes``) or not at all. Errors: ConfigError
    (a format or method that cannot be exported, a model too large for one ONNX file), ModelFileError
    (an unreadable model folder, a failed export check), OutputError (``out`` refused or not writable).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    model = Path(model)
    out = check_export_target(out, overwrite)
    from ..model_file import read_model_config

    method = read_model_config(model)["detector"]
    if method not in EXPORTABLE:
        raise ConfigError(f"method {method!r} ({model}) cannot be exported to ONNX; exportable methods: "
                          f"{', '.join(EXPORTABLE)}")
    pred = TorchPredictor(model, device="cpu")
    size = tensor_bytes(pred.detector)
    if size > MAX_TENSOR_BYTES:
        raise ConfigError(f"{model}: the {method} graph would hold {size / 2**30:.2f} GiB of tensors; one ONNX file "
                          f"holds at most {MAX_TENSOR_BYTES / 2**30:.2f} GiB (protobuf limit): refit with a smaller "
                          "model (PatchCore: lower coreset_ratio; PaDiM: lower n_features or image size)")
    h, w = pred.transform.output_size
    probe = np.random.default_rng(0).random((2, 3, h, w), dtype=np.float32)  # batch 2: the batch axis stays dynamic
    log.info("export: tracing %s (%.1f MB of tensors) at %dx%d", method, size / 2**20, h, w)
    data = _with_metadata(_trace(pred.detector, torch.from_numpy(probe)), metadata(pred, model))
    if check:
        _check(data, pred, probe, out)
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:  # disk full, permissions: nothing is left behind (atomic_write removes its temporary file)
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}; nothing was written") from None
    log.info("export: wrote %s (%.1f MB)", out, len(data) / 2**20)
    return out


__all__ = ["EXPORTABLE", "FORMATS", "check_export_target", "export_model", "graph_forward", "metadata", "tensor_bytes"]
