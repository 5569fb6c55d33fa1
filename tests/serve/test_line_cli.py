"""On the line with real `flawmap serve --log` processes: a row for every image under load, kill -9 mid-load
leaves a readable database that holds every row answered before the commit bound, SIGHUP reloads, and the
review -> update -> reload round trip."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from flawmap.cli import main
from flawmap.serve import inspections as ilog

from .conftest import png, start_cli_server


async def _load(url: str, bodies: list[bytes], n: int, clients: int, done: list) -> None:
    counter = iter(range(n))

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            try:
                r = await c.post(url + "/v1/predict", content=bodies[i % len(bodies)],
                                 headers={"content-type": "image/png"})
            except httpx.TransportError:
                return  # the server was killed
            if r.status_code == 200:
                done.append((time.monotonic(), r.json()["request_id"]))

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))


def _bodies(served_model) -> list[bytes]:
    return [p.read_bytes() for p in [*served_model.good, *served_model.defect]]


def test_every_request_is_logged_under_load(served_model, cli_server, tmp_path) -> None:
    proc, url = cli_server("--log", str(tmp_path / "log"), "--keep-images", "all")
    done: list = []
    asyncio.run(_load(url, _bodies(served_model), 120, 8, done))
    assert len(done) == 120
    card = httpx.get(url + "/v1/model").json()
    assert card["log"]["dropped"] == 0
    proc.send_signal(signal.SIGTERM)  # a graceful stop writes what is queued
    proc.wait(30)
    rows = list(ilog.iter_rows(tmp_path / "log"))
    assert sorted(r["request_id"] for r in rows) == sorted(rid for _, rid in done)
    assert {r["model_id"] for r in rows} == {served_model.predictor.model_id}
    kept = {p.name for p in (tmp_path / "log" / ilog.IMAGES_DIR).rglob("*") if p.is_file()}
    assert kept == {r["image_sha256"] for r in rows}  # identical uploads stored once
    assert main(["log", str(tmp_path / "log"), "--csv", str(tmp_path / "log.csv")]) == 0
    import csv

    with open(tmp_path / "log.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 120


def test_kill_9_mid_load_leaves_a_readable_log(served_model, cli_server, tmp_path) -> None:
    proc, url = cli_server("--log", str(tmp_path / "log"), "--keep-images", "all")
    done: list = []
    t = threading.Thread(target=lambda: asyncio.run(_load(url, _bodies(served_model), 10_000, 8, done)))
    t.start()
    deadline = time.monotonic() + 60
    while len(done) < 60 or time.monotonic() - done[0][0] < 4.0:  # seconds of answered, logged load
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.05)
    killed_at = time.monotonic()
    proc.kill()
    proc.wait(10)
    t.join(60)
    con = sqlite3.connect(tmp_path / "log" / ilog.DB_NAME)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    logged = {r["request_id"] for r in ilog.iter_rows(tmp_path / "log")}
    # answered well before the kill (more than the commit interval plus a margin for a busy machine): logged
    early = {rid for at, rid in done if at < killed_at - 4 * ilog.COMMIT_S - 1.0}
    assert early and early <= logged, (len(early), len(early - logged))
    assert logged <= {rid for _, rid in done}
    for r in ilog.iter_rows(tmp_path / "log"):  # every kept image a row names is whole
        if r["image_kept"]:
            p = ilog.image_path(tmp_path / "log", r["image_sha256"])
            import hashlib

            assert hashlib.sha256(p.read_bytes()).hexdigest() == r["image_sha256"]


def test_sighup_reloads_and_a_broken_model_keeps_the_old(served_model, tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(served_model.path, model)
    proc, url = start_cli_server(model)
    try:
        old = httpx.get(url + "/v1/model").json()["model_id"]
        (model / "new.tmp").write_text((model / "config.json").read_text() + "\n")
        (model / "new.tmp").replace(model / "config.json")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (new := httpx.get(url + "/v1/model").json()["model_id"]) == old:
            assert time.monotonic() < deadline, "SIGHUP did not reload the model"
            time.sleep(0.1)
        # a new, broken file (renamed into place as flawmap writes files: the served tensors may be memory-mapped
        # from the old one, which must not be truncated under a running server)
        (model / "broken.tmp").write_bytes(b"not a tensor file")
        (model / "broken.tmp").replace(model / "model.safetensors")
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert proc.poll() is None
        assert httpx.get(url + "/v1/model").json()["model_id"] == new
        r = httpx.post(url + "/v1/predict", content=served_model.defect[0].read_bytes(),
                       headers={"content-type": "image/png"}, timeout=60)
        assert r.status_code == 200 and r.json()["model_id"] == new
    finally:
        proc.terminate()
        proc.wait(20)
    assert "reload" in proc.stdout.read()  # the failed SIGHUP reload is reported in the server log


def test_review_update_reload_round_trip(served_model, cli_server, tmp_path) -> None:
    """Parts under a new light are flagged; an operator marks them good; `flawmap update --from-log` adds them;
    the server reloads the new model: the same parts now pass, the rows carry the new model id."""
    root = served_model.good[0].parents[3]  # the synthetic dataset of the fixture
    train = sorted((root / "object" / "train" / "good").glob("*.png"))
    cal = tmp_path / "cal"
    cal.mkdir()
    for p in train[12:]:  # the fixture's calibration images (the model never saw them)
        shutil.copy(p, cal / p.name)
    shifted = [np.clip(np.asarray(Image.open(p).convert("RGB"), np.float32) * [1.5, 1.3, 0.8], 0, 255).astype(np.uint8)
               for p in train[:12]]
    proc, url = cli_server("--log", str(tmp_path / "log"), "--keep-images", "all")
    h: dict[str, str] = {}  # the keys are tested on their own (test_line.py)
    before = []
    for i, img in enumerate(shifted):
        r = httpx.post(url + "/v1/predict", files=[("file", (f"s{i}.png", png(img), "image/png"))], headers=h,
                       timeout=60)
        before.append(r.json()["results"][0])
    assert sum(x["verdict"] == "anomalous" for x in before) >= 6, [x["score"] for x in before]
    deadline = time.monotonic() + 10
    while len(items := httpx.get(url + "/v1/inspections", params={"limit": 50}, headers=h).json()["items"]) < 12:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for it in items:
        assert httpx.post(url + f"/v1/inspections/{it['id']}/label", json={"label": "good", "note": "new lamp"},
                          headers=h).status_code == 200
    new = tmp_path / "model-v2"
    assert main(["update", str(served_model.path), "--from-log", str(tmp_path / "log"), "--label", "good",
                 "--val-good", str(cal), "--out", str(new), "--no-progress"]) == 0
    r = httpx.post(url + "/v1/model/reload", json={"path": str(new)}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    new_id = r.json()["model_id"]
    assert new_id != served_model.predictor.model_id and r.json()["model_version"] == 2
    after = []
    for i, img in enumerate(shifted):
        r = httpx.post(url + "/v1/predict", files=[("file", (f"s{i}.png", png(img), "image/png"))], headers=h,
                       timeout=60)
        assert r.json()["model_id"] == new_id
        after.append(r.json()["results"][0])
    assert sum(x["verdict"] == "anomalous" for x in after) < sum(x["verdict"] == "anomalous" for x in before)
    assert np.mean([a["normalized_score"] for a in after]) < np.mean([b["normalized_score"] for b in before])
    deadline = time.monotonic() + 10
    while len(rows := httpx.get(url + "/v1/inspections", params={"model_id": new_id}, headers=h).json()["items"]) < 12:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert all(r["model_version"] == 2 for r in rows)
    assert Path(served_model.path, "config.json").is_file()  # the old model is still there
