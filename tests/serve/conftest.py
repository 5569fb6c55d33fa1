"""Fixtures of the service tests: a tiny calibrated PatchCore model folder, real uvicorn servers on
127.0.0.1 (in a thread, or a `flawmap serve` subprocess), encoded test images."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 64  # model input (px)


@dataclass
class ServedModel:
    path: Path
    good: list[Path]  # held-out good test images, scored below the threshold
    defect: list[Path]  # defective test images, scored above it
    predictor: object  # TorchPredictor on the CPU (reference scores: predictor.raw on one image)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """PatchCore (tiny backbone) fitted on 12 synthetic good images at 64 px, calibrated on 6 held-out ones."""
    from flawmap.data import Transform, load_image, make_synthetic_mvtec, scan_category
    from flawmap.deploy.predictor import open_predictor
    from flawmap.detectors.patchcore import PatchCore
    from flawmap.factory import get_detector
    from flawmap.metrics.thresholds import calibrate

    root = make_synthetic_mvtec(tmp_path_factory.mktemp("serve-data"), categories=("object",), n_train=18,
                                n_test_good=4, n_test_defect=6, size=96, seed=1)
    data = scan_category(root, "object")
    tf = Transform(resize=SIZE)
    train = [s.path for s in data.train]
    x = lambda paths: torch.stack([tf(load_image(p)) for p in paths])  # noqa: E731
    det = get_detector("patchcore", **{**PatchCore.tiny_params(), "device": "cpu"}).fit(x(train[:12]))
    ref = det.predict(x(train[12:]))
    cal = calibrate(ref.scores, ref.maps, target_fpr=0.1, source="6 held-out synthetic good images")
    path = tmp_path_factory.mktemp("serve-model") / "model"
    det.save(path, extra={"transform": tf.to_dict(), "calibration": cal.to_dict()})
    pred = open_predictor(path, device="cpu")
    tests = [s for s in data.test]
    scores = pred.raw(pred.preprocess([load_image(s.path) for s in tests]))[0]
    good = [s.path for s, v in zip(tests, scores) if s.label == 0 and v < cal.image_threshold]
    defect = [s.path for s, v in zip(tests, scores) if s.label == 1 and v >= cal.image_threshold]
    assert good and defect, f"the test model does not separate its test images: {scores}, {cal.image_threshold}"
    return ServedModel(path, good, defect, pred)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    app: object


@pytest.fixture
def live_server(served_model: ServedModel):
    """Start ``create_app(predictor, ServeSettings(**kw))`` under uvicorn in a thread; yields a starter."""
    import uvicorn

    from flawmap.serve.app import create_app
    from flawmap.serve.settings import ServeSettings

    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(predictor=None, **kw) -> LiveServer:
        app = create_app(predictor if predictor is not None else served_model.predictor, ServeSettings(**kw))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        t.start()
        started.append((server, t))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and t.is_alive(), "the test server did not start"
            time.sleep(0.02)
        return LiveServer(f"http://127.0.0.1:{port}", app)

    yield start
    for server, t in started:
        server.should_exit = True
        t.join(10)


def start_cli_server(model: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`flawmap serve MODEL --port P ...` as a subprocess; returns (process, base URL) once /readyz is 200."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flawmap.cli", "serve", str(model), "--port", str(port),
                             "--device", "cpu", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"flawmap serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "flawmap serve did not become ready in 60 s"
        time.sleep(0.1)


@pytest.fixture
def cli_server(served_model: ServedModel) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(*args: str, **kw) -> tuple[subprocess.Popen, str]:
        proc, url = start_cli_server(served_model.path, *args, **kw)
        procs.append(proc)
        return proc, url

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
