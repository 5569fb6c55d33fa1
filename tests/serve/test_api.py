"""The HTTP API on a real uvicorn server: predict (multipart, raw body, heatmap, map), model card,
health/readiness, OpenAPI schema, the API key."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from flawmap.data import load_image


def test_predict_multipart_matches_the_predictor(served_model, live_server) -> None:
    srv = live_server()
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in [*served_model.good[:1], *served_model.defect[:1]]]
    r = httpx.post(srv.url + "/v1/predict", files=files, timeout=30)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["name"] for x in res] == [f[1][0] for f in files]
    assert [x["verdict"] for x in res] == ["ok", "anomalous"] and [x["anomalous"] for x in res] == [False, True]
    pred = served_model.predictor
    for x, path in zip(res, [served_model.good[0], served_model.defect[0]]):
        img = load_image(path)
        ref = pred.raw(pred.preprocess([img]))[0][0]
        assert x["score"] == pytest.approx(float(ref), rel=1e-5)
        assert x["threshold"] == pred.calibration.image_threshold
        assert x["normalized_score"] == float(pred.calibration.normalize([x["score"]])[0])
        assert (x["height"], x["width"]) == img.shape[:2] and x["ms"] > 0 and x["batch_size"] >= 1
        assert "heatmap_png" not in x and "map_npy" not in x


def test_predict_raw_body_with_heatmap_and_map(served_model, live_server) -> None:
    srv = live_server()
    path = served_model.defect[0]
    r = httpx.post(srv.url + "/v1/predict?heatmap=png&map=npy", content=path.read_bytes(),
                   headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text
    (x,) = r.json()["results"]
    pred = served_model.predictor
    ref_scores, ref_maps = pred.raw(pred.preprocess([load_image(path)]))
    amap = np.load(io.BytesIO(base64.b64decode(x["map_npy"])), allow_pickle=False)
    assert amap.shape == ref_maps[0].shape and np.allclose(amap, ref_maps[0], rtol=1e-5, atol=1e-6)
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(x["heatmap_png"]))))
    h, w = ref_maps[0].shape
    assert overlay.shape == (h, 3 * w + 8, 3)  # image | heatmap | overlay, 4 px separators
    assert x["name"] == "body" and x["verdict"] == "anomalous"


def test_model_card_health_ready_and_openapi(served_model, live_server) -> None:
    srv = live_server()
    m = httpx.get(srv.url + "/v1/model").json()
    assert m["method"] == "patchcore" and m["backbone"] == "efficientnet_lite0"
    assert m["calibration"] == served_model.predictor.calibration.to_dict()
    assert m["preprocessing"] == {"resize": 64, "crop": None, "aspect": "stretch"} and m["flawmap_version"]
    assert m["server"]["device"] == "cpu" and m["server"]["max_batch"] == 8
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(srv.url + "/readyz").json() == {"status": "ready"}
    schema = httpx.get(srv.url + "/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(srv.url + "/docs").status_code == 200
    page = httpx.get(srv.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no external URL


def test_readyz_is_503_until_the_model_is_loaded(served_model, live_server) -> None:
    release = __import__("threading").Event()

    def slow_loader():
        release.wait(20)
        return served_model.predictor

    srv = live_server(slow_loader)
    assert httpx.get(srv.url + "/healthz").status_code == 200
    r = httpx.get(srv.url + "/readyz")
    assert r.status_code == 503 and "not loaded" in r.json()["error"]
    assert httpx.post(srv.url + "/v1/predict", content=b"x", headers={"content-type": "image/png"}).status_code == 503
    release.set()
    deadline = time.monotonic() + 10
    while httpx.get(srv.url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_api_key(served_model, live_server) -> None:
    srv = live_server(api_key="s3cret-key")
    body = served_model.good[0].read_bytes()
    assert httpx.get(srv.url + "/healthz").status_code == 200  # liveness stays open
    for path in ("/readyz", "/v1/model", "/", "/openapi.json", "/docs"):
        r = httpx.get(srv.url + path)
        assert r.status_code == 401 and "API key" in r.json()["error"], path
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": "s3cret-ke"}, {"authorization": "Bearer nope"}):
        r = httpx.post(srv.url + "/v1/predict", content=body, headers={"content-type": "image/png", **headers})
        assert r.status_code == 401
    for headers in ({"x-api-key": "s3cret-key"}, {"authorization": "Bearer s3cret-key"}):
        r = httpx.post(srv.url + "/v1/predict", content=body, headers={"content-type": "image/png", **headers})
        assert r.status_code == 200 and r.json()["results"][0]["verdict"] == "ok"
    assert httpx.get(srv.url + "/v1/model", auth=("any", "s3cret-key")).status_code == 200  # Basic: the page


def test_serves_an_exported_onnx_model(served_model, live_server, tmp_path) -> None:
    """MODEL may be an .onnx export: same verdicts and (within float rounding) scores as the model folder."""
    from flawmap.deploy.export import export_model
    from flawmap.deploy.predictor import open_predictor

    onnx_path = export_model(served_model.path, tmp_path / "model.onnx")
    pred = open_predictor(onnx_path)
    srv = live_server(predictor=pred)
    paths = [*served_model.good[:1], *served_model.defect[:1]]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = httpx.post(srv.url + "/v1/predict?heatmap=png", files=files, timeout=60)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["verdict"] for x in res] == ["ok", "anomalous"]
    ref = served_model.predictor
    for x, path in zip(res, paths):
        s_ref = float(ref.raw(ref.preprocess([load_image(path)]))[0][0])
        assert x["score"] == pytest.approx(s_ref, rel=1e-4) and x["heatmap_png"]
    card = httpx.get(srv.url + "/v1/model").json()
    assert card["method"] == "patchcore" and card["calibration"] == ref.calibration.to_dict()
