"""Run an exported model (``flawmap export``) with onnxruntime: no PyTorch.

    pred = OnnxPredictor("bottle.onnx")            # or deploy.predictor.open_predictor("bottle.onnx")
    x = pred.preprocess([img_uint8_hwc, ...])      # (N, 3, H, W) float32, the model's stored Transform
    scores, maps = pred.raw(x)                     # (N,), (N, H, W) float32: the graph's outputs
    verdicts = pred.decide(scores)                 # the stored calibration (deploy.backend.decide)

The file carries its metadata (method, parameters, preprocessing, calibration, input size, flawmap
version) as JSON in the ONNX ``metadata_props`` entry ``flawmap``; a file without it, with garbled or
inconsistent metadata, or that onnxruntime cannot read raises ModelFileError naming the file.
This module imports neither torch nor onnx (only numpy, PIL and onnxruntime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.transform import Transform
from ..errors import ConfigError, DataError, FlawmapError, ModelFileError
from .backend import Verdict, calibration_of, decide, model_card, model_id, model_version, preprocess

FORMAT = "flawmap-onnx"
FORMAT_VERSION = 1
METADATA_KEY = "flawmap"
INPUT, OUTPUTS = "images", ("scores", "maps")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("running an .onnx model needs onnxruntime: pip install \"flawmap[deploy]\"") from None
    return onnxruntime


def _session(path: Path, providers: Sequence[str] | None = None, optimize: bool = True) -> Any:
    """An onnxruntime InferenceSession of ``path``; ModelFileError when it is missing or unreadable."""
    ort = _ort()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    if not optimize:  # metadata only: no graph optimisation work
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3  # errors only: onnxruntime's own warnings are not ours to show
    if providers is None:
        avail = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path}: not a readable ONNX model ({first[:200]})") from None


def _parse(text: str | None, path: Path) -> dict[str, Any]:
    """The flawmap metadata JSON, checked field by field (an error names the field)."""
    if text is None:
        raise ModelFileError(f"{path}: no flawmap metadata in the ONNX file (metadata_props {METADATA_KEY!r}); "
                             "export the model with `flawmap export MODEL --format onnx -o FILE.onnx`")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise ModelFileError(f"{path}: the flawmap metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: the flawmap metadata is not of format {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: export format version {meta.get('format_version')!r} (written by flawmap "
                             f"{meta.get('flawmap_version')}) is not supported (this flawmap reads version "
                             f"{FORMAT_VERSION}); export the model again with this version")
    for key, kind, what in (("method", str, "a method name"), ("params", dict, "an object"),
                            ("transform", dict, "an object {resize, crop, aspect}")):
        if not isinstance(meta.get(key), kind):
            raise ModelFileError(f"{path}: metadata field {key!r} must be {what}; got {meta.get(key)!r:.80}")
    size = meta.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ModelFileError(f"{path}: metadata field 'input_size' must be [height, width]; got {size!r:.80}")
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checked flawmap metadata of an exported ONNX file (ModelFileError if missing or invalid)."""
    path = Path(path)
    sess = _session(path, ["CPUExecutionProvider"], optimize=False)
    return _parse(sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)


class OnnxPredictor:
    """An exported ``.onnx`` file run with onnxruntime (CUDA when onnxruntime has it, else CPU)."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers)
        meta = _parse(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), self.path)
        try:
            self.transform = Transform.from_dict(meta["transform"])
            self.transform.validate()
        except (FlawmapError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{self.path}: metadata field 'transform' is invalid: {exc}") from None
        self.method: str = meta["method"]
        self.calibration = calibration_of(meta, str(self.path))
        self.input_size = (int(meta["input_size"][0]), int(meta["input_size"][1]))
        self._check_graph(meta)
        self.model_id, self.model_version = model_id(self.path), model_version(meta)
        self.card = model_card(self.method, meta["params"], self.transform, self.calibration,
                               meta.get("flawmap_version"), "onnx", model_id=self.model_id,
                               model_version=self.model_version, providers=self.session.get_providers())

    def _check_graph(self, meta: dict[str, Any]) -> None:
        """The metadata, the transform and the graph's input/outputs must agree (one line naming what differs)."""
        if tuple(self.transform.output_size) != self.input_size:
            raise ModelFileError(f"{self.path}: metadata do not match: the transform gives "
                                 f"{self.transform.output_size} images, input_size is {self.input_size}")
        ins, outs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        shape = list(ins[0].shape) if len(ins) == 1 else None
        if len(ins) != 1 or ins[0].name != INPUT or shape is None or len(shape) != 4 or \
                [shape[1], shape[2], shape[3]] != [3, *self.input_size] or tuple(outs) != OUTPUTS:
            got = [(i.name, list(i.shape)) for i in ins]
            raise ModelFileError(f"{self.path}: metadata do not match the graph: expected input {INPUT!r} "
                                 f"[N, 3, {self.input_size[0]}, {self.input_size[1]}] and outputs {list(OUTPUTS)}; "
                                 f"the graph has inputs {got} and outputs {outs}")

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images -> (N, 3, H', W') float32 in [0, 1] (the stored Transform)."""
        return preprocess(self.transform, images)

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 -> scores (N,), maps (N, H, W) float32, one onnxruntime run."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[0] < 1 or tuple(x.shape[1:]) != (3, *self.input_size):
            raise DataError(f"{self.path}: expected images (N, 3, {self.input_size[0]}, {self.input_size[1]}); "
                            f"got {x.shape} (use preprocess)")
        scores, maps = self.session.run(list(OUTPUTS), {INPUT: x})
        return np.asarray(scores, dtype=np.float32), np.asarray(maps, dtype=np.float32)

    def decide(self, scores: np.ndarray) -> list[Verdict]:
        return decide(self.calibration, scores)


__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "OnnxPredictor", "read_metadata"]
