"""SIGTERM on a real `flawmap serve` process: the in-flight request finishes (200, right score), new
connections are refused, the process ends cleanly (uvicorn re-raises the signal after its graceful
shutdown, so the exit status is -SIGTERM)."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from flawmap.data import load_image


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(served_model, cli_server) -> None:
    # a long batching wait keeps the request in flight while the signal arrives
    proc, url = cli_server("--max-batch", "64", "--max-wait-ms", "2000")
    path = served_model.defect[0]
    out: dict = {}

    def request() -> None:
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/predict", files=[("file", (path.name, path.read_bytes(), "image/png"))], timeout=30)
        out.update(status=r.status_code, body=r.json(), seconds=time.monotonic() - t0)

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.6)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # uvicorn checks for the signal every 0.1 s, then closes its listening socket
    assert t.is_alive(), "the request finished before the signal; the test proves nothing"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=5)
    t.join(30)
    assert out["status"] == 200 and out["seconds"] >= 1.5, out
    pred = served_model.predictor
    ref = float(pred.raw(pred.preprocess([load_image(path)]))[0][0])
    assert out["body"]["results"][0]["score"] == pytest.approx(ref, rel=1e-5)
    assert proc.wait(20) in (0, -signal.SIGTERM)
    log = proc.stdout.read()
    assert "Shutting down" in log and "Traceback" not in log, log
