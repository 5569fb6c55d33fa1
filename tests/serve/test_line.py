"""On the line, on a real uvicorn server: the inspection log (rows, filters, paging, kept images, labels),
hot reload (switch, failure keeps the old model, in-flight requests finish on the old one), /metrics parsed by
prometheus_client, drift in /v1/model, the two keys."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from flawmap.serve import inspections as ilog


def _post(url: str, paths: list[Path], **kw) -> httpx.Response:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return httpx.post(url + "/v1/predict", files=files, timeout=60, **kw)


def _wait_rows(folder: Path, n: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = list(ilog.iter_rows(folder)) if (folder / ilog.DB_NAME).exists() else []
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_every_image_is_logged_with_its_record(served_model, live_server, tmp_path) -> None:
    srv = live_server(log_dir=str(tmp_path / "log"), keep_images="anomalous")
    paths = [served_model.good[0], served_model.defect[0]]
    r = _post(srv.url, paths)
    assert r.status_code == 200, r.text
    body = r.json()
    rows = _wait_rows(tmp_path / "log", 2)
    assert len(rows) == 2
    pred = served_model.predictor
    by_name = {row["score"]: row for row in rows}
    for rec, path in zip(body["results"], paths):
        row = by_name[rec["score"]]
        assert row["verdict"] == rec["verdict"] and row["normalized_score"] == rec["normalized_score"]
        assert (row["width"], row["height"]) == (rec["width"], rec["height"]) and row["threshold"] == rec["threshold"]
        assert row["request_id"] == body["request_id"] and row["model_id"] == pred.model_id == body["model_id"]
        assert row["model_version"] == 1 and row["batch_size"] >= 1 and row["latency_ms"] > 0
        import hashlib

        assert row["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row["key_id"] is None and row["label"] is None
        assert row["image_kept"] == (rec["verdict"] == "anomalous")  # --keep-images anomalous
    # the API: list, filters, one record, the kept image (bytes as uploaded) and its overlay
    page = httpx.get(srv.url + "/v1/inspections").json()
    assert [i["id"] for i in page["items"]] == sorted((row["id"] for row in rows), reverse=True)
    assert page["next_cursor"] is None
    bad = httpx.get(srv.url + "/v1/inspections", params={"verdict": "anomalous"}).json()["items"]
    assert len(bad) == 1 and bad[0]["image_url"] and bad[0]["overlay_url"]
    rec = httpx.get(srv.url + f"/v1/inspections/{bad[0]['id']}").json()
    assert rec == bad[0]
    img = httpx.get(srv.url + "/" + rec["image_url"])
    assert img.status_code == 200 and img.content == served_model.defect[0].read_bytes()
    assert img.headers["content-type"] == "image/png"
    ov = httpx.get(srv.url + "/" + rec["overlay_url"])
    assert ov.status_code == 200 and ov.content.startswith(b"\x89PNG")
    ok = httpx.get(srv.url + "/v1/inspections", params={"verdict": "ok"}).json()["items"][0]
    assert ok["image_url"] is None
    r = httpx.get(srv.url + f"/v1/inspections/{ok['id']}/image")
    assert r.status_code == 404 and "not kept" in r.json()["error"]


def test_paging_filters_and_bad_queries(served_model, live_server, tmp_path) -> None:
    srv = live_server(log_dir=str(tmp_path / "log"), keep_images="none")
    for _ in range(5):
        assert _post(srv.url, [served_model.good[0]]).status_code == 200
    rows = _wait_rows(tmp_path / "log", 5)
    assert len(rows) == 5
    seen, cursor = [], None
    while True:
        page = httpx.get(srv.url + "/v1/inspections", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted((r["id"] for r in rows), reverse=True)
    t_mid = rows[2]["time"]
    since = httpx.get(srv.url + "/v1/inspections", params={"since": t_mid}).json()["items"]
    assert {i["id"] for i in since} == {r["id"] for r in rows if r["time"] >= t_mid}
    assert httpx.get(srv.url + "/v1/inspections", params={"until": "2000-01-01T00:00:00Z"}).json()["items"] == []
    mid = rows[0]["model_id"]
    assert len(httpx.get(srv.url + "/v1/inspections", params={"model_id": mid}).json()["items"]) == 5
    assert httpx.get(srv.url + "/v1/inspections", params={"model_id": "0" * 16}).json()["items"] == []
    for params, words in (({"verdict": "maybe"}, "ok, anomalous, none"), ({"label": "x"}, "good, defect, none"),
                          ({"since": "yesterday"}, "ISO 8601"), ({"model_id": "../etc"}, "hex"),
                          ({"limit": 0}, "limit"), ({"limit": 10_000}, "limit"), ({"cursor": "abc"}, "cursor"),
                          ({"request_id": "x"}, "request_id")):
        r = httpx.get(srv.url + "/v1/inspections", params=params)
        assert r.status_code == 400 and all(w in r.json()["error"] for w in words.split(" ")[:1]), (params, r.text)
    for bad_id in ("0", "-1", "abc", "1.5", str(2**70)):
        assert httpx.get(srv.url + f"/v1/inspections/{bad_id}").status_code == 400, bad_id
    r = httpx.get(srv.url + "/v1/inspections/999999")
    assert r.status_code == 404 and "no inspection 999999" in r.json()["error"]


def test_labels(served_model, live_server, tmp_path) -> None:
    srv = live_server(log_dir=str(tmp_path / "log"), keep_images="all")
    _post(srv.url, [served_model.defect[0]])
    (row,) = _wait_rows(tmp_path / "log", 1)
    url = srv.url + f"/v1/inspections/{row['id']}/label"
    r = httpx.post(url, json={"label": "good", "note": "<b>glare</b> on the cap", "by": "ana"})
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["label"] == "good" and rec["note"] == "<b>glare</b> on the cap" and rec["labeled_by"] == "ana"
    assert abs(rec["labeled_at"] - time.time()) < 60
    assert httpx.get(srv.url + "/v1/inspections", params={"label": "good"}).json()["items"][0]["id"] == row["id"]
    assert httpx.get(srv.url + "/v1/inspections", params={"label": "none"}).json()["items"] == []
    for body, word in (({"label": "maybe"}, "label"), ({"label": "good", "note": "x" * 501}, "note"), ({}, "label"),
                       ({"label": "good", "by": "y" * 65}, "by")):
        r = httpx.post(url, json=body)
        assert r.status_code == 400 and word in r.json()["error"], (body, r.text)
    assert httpx.post(srv.url + "/v1/inspections/424242/label", json={"label": "defect"}).status_code == 404
    summary = ilog.summary(tmp_path / "log")
    assert summary["reviewed_good"] == 1 and summary["false_alarms"] == 1 and summary["false_alarm_rate"] == 1.0
    assert ilog.labeled_images(tmp_path / "log", "good") == [ilog.image_path(tmp_path / "log", row["image_sha256"])]


def test_without_log_the_routes_say_so(served_model, live_server) -> None:
    srv = live_server()
    r = httpx.get(srv.url + "/v1/inspections")
    assert r.status_code == 404 and "--log DIR" in r.json()["error"]
    assert httpx.get(srv.url + "/v1/model").json()["log"] is None


def test_eviction_keeps_rows(served_model, live_server, tmp_path) -> None:
    one = served_model.defect[0].stat().st_size
    # room for about two images: the third, fourth... evict the oldest
    srv = live_server(log_dir=str(tmp_path / "log"), keep_images="all", max_log_gb=2.5 * one / 2**30)
    paths = [*served_model.good, *served_model.defect]
    assert len({p.read_bytes() for p in paths}) >= 4
    for p in paths:
        assert _post(srv.url, [p]).status_code == 200
    rows = _wait_rows(tmp_path / "log", len(paths))
    assert len(rows) == len(paths)  # every row stays
    kept = [r for r in rows if r["image_kept"]]
    assert 1 <= len(kept) <= 2 and kept[-1]["id"] == rows[-1]["id"]  # the newest is kept
    files = list((tmp_path / "log" / ilog.IMAGES_DIR).rglob("*"))
    assert sum(f.stat().st_size for f in files if f.is_file()) <= 2.5 * one * 1.01
    m = httpx.get(srv.url + "/v1/model").json()["log"]
    assert m["evicted"] >= 1 and m["dropped"] == 0


def test_read_only_log_dir_keeps_serving(served_model, live_server, tmp_path, caplog) -> None:
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root ignores permission bits: a folder that cannot exist instead
        (tmp_path / "a-file").write_text("x")
        folder = tmp_path / "a-file" / "log"
    try:
        srv = live_server(log_dir=str(folder))
        for _ in range(3):
            r = _post(srv.url, [served_model.good[0]])
            assert r.status_code == 200 and r.json()["results"][0]["verdict"] == "ok"
        log = httpx.get(srv.url + "/v1/model").json()["log"]
        assert log["available"] is False and log["dropped"] == 3 and log["logged"] == 0
        assert sum("not logged" in rec.getMessage() for rec in caplog.records) == 1  # one warning
        assert httpx.get(srv.url + "/v1/inspections").status_code == 503
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_full_disk_mid_run_degrades_to_not_logged(served_model, live_server, tmp_path, caplog) -> None:
    """The disk fills up while serving (SQLite's "database or disk is full" on every write): the rows are
    counted as not logged, one warning, predictions go on; the rows committed before stay readable."""
    import sqlite3

    folder = tmp_path / "log"
    srv = live_server(log_dir=str(folder), keep_images="all")
    assert _post(srv.url, [served_model.good[0]]).status_code == 200
    assert len(_wait_rows(folder, 1)) == 1
    st = srv.app.state.flawmap

    def full(con, batch):
        raise sqlite3.OperationalError("database or disk is full")

    st.log._write = full
    for _ in range(3):
        r = _post(srv.url, [served_model.defect[0]])
        assert r.status_code == 200 and r.json()["results"][0]["verdict"] == "anomalous"
    deadline = time.monotonic() + 10
    while st.log.dropped < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st.log.dropped == 3 and st.log.logged == 1
    assert sum("not logged" in rec.getMessage() for rec in caplog.records) == 1
    assert len(list(ilog.iter_rows(folder))) == 1


def _metrics(url: str, **kw) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(url + "/metrics", **kw)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_and_drift(served_model, live_server, tmp_path) -> None:
    srv = live_server(log_dir=str(tmp_path / "log"), drift_window=10)
    pred = served_model.predictor
    for p in [served_model.good[0], served_model.defect[0], served_model.good[0]]:
        assert _post(srv.url, [p]).status_code == 200
    assert httpx.post(srv.url + "/v1/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    m = _metrics(srv.url)
    images = {lab["verdict"]: v for lab, v in m["flawmap_images_total"]}
    assert images == {"ok": 2.0, "anomalous": 1.0}
    assert all(lab["model_id"] == pred.model_id for lab, _ in m["flawmap_images_total"])
    req = {(lab["route"], lab["status"]): v for lab, v in m["flawmap_requests_total"]}
    assert req[("/v1/predict", "200")] == 3 and req[("/v1/predict", "415")] == 1
    assert [v for lab, v in m["flawmap_request_latency_seconds_count"]] == [3.0]
    assert [v for lab, v in m["flawmap_batch_size_count"]] == [3.0]
    assert m["flawmap_model_info"] == [({"model_id": pred.model_id, "method": "patchcore", "version": "1"}, 1.0)]
    assert m["flawmap_drift_window_images"][0][1] == 3 and m["flawmap_drift_flagged_share"][0][1] == pytest.approx(1 / 3)
    for name in ("flawmap_queue_depth", "flawmap_log_writer_lag_rows", "flawmap_log_dropped_rows"):
        assert name in m, name
    drift = httpx.get(srv.url + "/v1/model").json()["drift"]
    assert drift["n"] == 3 and drift["flagged"] == 1 and drift["status"] == "ok"  # fewer than 30 images: no verdict
    lo, hi = drift["interval"]
    assert lo < 1 / 3 < hi and drift["target_fpr"] == pred.calibration.target_fpr
    assert 0 <= drift["ks"] <= 1


def test_drift_warns_on_a_shifted_line(served_model) -> None:
    from flawmap.serve.drift import DriftMonitor

    cal = served_model.predictor.calibration
    mon = DriftMonitor(cal, window=50)
    for s in list(cal.scores) * 8:  # the calibration distribution itself: ok
        mon.add(s)
    assert mon.report()["status"] == "ok"
    for s in cal.scores:  # then the whole window far above the threshold
        for _ in range(10):
            mon.add(s + 2 * (cal.image_threshold - cal.score_low) + 1)
    rep = mon.report()
    assert rep["status"] == "warn" and rep["n"] == 50 and rep["flagged_share"] == 1.0 and rep["ks"] == 1.0


def test_reload_switches_and_a_failed_load_keeps_the_old_model(served_model, live_server, tmp_path) -> None:
    from flawmap.deploy.predictor import open_predictor

    copy = tmp_path / "copy"
    shutil.copytree(served_model.path, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")  # new bytes, same model
    srv = live_server(log_dir=str(tmp_path / "log"))
    old_id = served_model.predictor.model_id
    new_id = open_predictor(copy, device="cpu").model_id
    assert new_id != old_id
    assert _post(srv.url, [served_model.good[0]]).json()["model_id"] == old_id
    for body, words in (({"path": str(tmp_path / "nope")}, ("cannot load", "nope", f"still serving {old_id}")),
                        ({"path": str(tmp_path)}, ("cannot load", f"still serving {old_id}"))):
        r = httpx.post(srv.url + "/v1/model/reload", json=body, timeout=60)
        assert r.status_code == 422 and all(w in r.json()["error"] for w in words), r.text
        assert httpx.get(srv.url + "/v1/model").json()["model_id"] == old_id
    r = httpx.post(srv.url + "/v1/model/reload", json={"path": str(copy)}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == new_id and r.json()["previous_model_id"] == old_id
    card = httpx.get(srv.url + "/v1/model").json()
    assert card["model_id"] == new_id and card["path"] == str(copy) and card["drift"]["n"] == 0
    assert _post(srv.url, [served_model.good[0]]).json()["model_id"] == new_id
    rows = _wait_rows(tmp_path / "log", 2)
    assert [r["model_id"] for r in rows] == [old_id, new_id]
    m = _metrics(srv.url)
    assert {lab["result"]: v for lab, v in m["flawmap_model_reloads_total"]} == {"failed": 2.0, "ok": 1.0}
    assert [lab["model_id"] for lab, _ in m["flawmap_model_info"]] == [new_id]


def test_in_flight_requests_finish_on_the_old_model(served_model, live_server, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(served_model.path, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    srv = live_server(max_batch=64, max_wait_ms=1500)  # the request waits 1.5 s in the batcher
    old_id = served_model.predictor.model_id
    out: dict = {}

    def request() -> None:
        r = _post(srv.url, [served_model.defect[0]])
        out.update(status=r.status_code, body=r.json())

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.5)
    r = httpx.post(srv.url + "/v1/model/reload", json={"path": str(copy)}, timeout=60)
    assert r.status_code == 200 and t.is_alive(), "the request finished before the reload; the test proves nothing"
    t.join(30)
    assert out["status"] == 200 and out["body"]["model_id"] == old_id
    assert out["body"]["results"][0]["verdict"] == "anomalous"


def test_two_keys(served_model, live_server, tmp_path) -> None:
    srv = live_server(api_key="read-key", admin_key="admin-key", log_dir=str(tmp_path / "log"))
    api, admin = {"x-api-key": "read-key"}, {"x-api-key": "admin-key"}
    assert _post(srv.url, [served_model.defect[0]]).status_code == 401
    assert _post(srv.url, [served_model.defect[0]], headers=api).status_code == 200
    (row,) = _wait_rows(tmp_path / "log", 1)
    from flawmap.serve.auth import key_id

    assert row["key_id"] == key_id("api", "read-key") and "read-key" not in str(row)
    for h in (api, admin):  # reading: either key
        assert httpx.get(srv.url + "/v1/inspections", headers=h).status_code == 200
        assert httpx.get(srv.url + "/metrics", headers=h).status_code == 200
    assert httpx.get(srv.url + "/metrics").status_code == 401
    url = srv.url + f"/v1/inspections/{row['id']}/label"
    r = httpx.post(url, json={"label": "defect"}, headers=api)
    assert r.status_code == 401 and "admin key" in r.json()["error"]
    r = httpx.post(url, json={"label": "defect"}, headers=admin)
    assert r.status_code == 200 and r.json()["labeled_by"] == key_id("admin", "admin-key")
    assert httpx.post(srv.url + "/v1/model/reload", json={}, headers=api).status_code == 401
    assert httpx.post(srv.url + "/v1/model/reload", json={}, headers=admin, timeout=60).status_code == 200


def test_only_an_admin_key_guards_everything(served_model, live_server) -> None:
    srv = live_server(admin_key="only-admin")
    assert _post(srv.url, [served_model.good[0]]).status_code == 401
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert _post(srv.url, [served_model.good[0]], headers={"x-api-key": "only-admin"}).status_code == 200
    assert httpx.get(srv.url + "/healthz").status_code == 200


def test_bad_settings_of_the_line() -> None:
    from flawmap.errors import ConfigError
    from flawmap.serve.settings import ServeSettings

    for kw, words in (({"keep_images": "some"}, "none, anomalous, all"), ({"max_log_gb": 0}, "max_log_gb"),
                      ({"max_log_gb": -1.0}, "max_log_gb"), ({"admin_key": ""}, "admin key"),
                      ({"drift_window": 5}, "drift_window"), ({"drift_window": True}, "drift_window")):
        with pytest.raises(ConfigError, match=words.split(",")[0]):
            ServeSettings(**kw)


def test_cli_bad_flags_of_the_line_are_one_line(served_model, tmp_path, capsys) -> None:
    from flawmap.cli import main

    assert main(["serve", str(served_model.path), "--log", str(tmp_path), "--max-log-gb", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "flawmap serve: error: serve: max_log_gb must be a number > 0 (or unset: no limit); got 0.0"]
    for argv, flag in ((["--keep-images", "some"], "--keep-images"), (["--drift-window", "3"], "--drift-window")):
        with pytest.raises(SystemExit) as exc:
            main(["serve", str(served_model.path), *argv])
        assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert main(["log", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no inspection log" in err[0] and "nowhere" in err[0]


def test_flawmap_log_summary(tmp_path, capsys) -> None:
    import hashlib

    from flawmap.cli import main

    log = ilog.InspectionLog(tmp_path / "log", keep_images="none").start()
    scores = [0.1, 0.2, 0.9, 0.3]
    for i, s in enumerate(scores):
        log.record({"time": 1_700_000_000 + i, "request_id": f"{i:032x}", "name": f"{i}.png",
                    "image_sha256": hashlib.sha256(bytes([i])).hexdigest(), "width": 8, "height": 8, "score": s,
                    "normalized_score": s, "verdict": "anomalous" if s >= 0.5 else "ok", "threshold": 0.5,
                    "model_id": "abc", "model_version": 1, "latency_ms": 2.0, "batch_size": 1, "key_id": None}, b"x")
    log.stop()
    rows = list(ilog.iter_rows(tmp_path / "log"))
    ilog.set_label(tmp_path / "log", rows[2]["id"], "good", "glare", "ana")  # a false alarm
    ilog.set_label(tmp_path / "log", rows[0]["id"], "good", None, "ana")
    with pytest.raises(Exception, match="good, defect"):
        ilog.set_label(tmp_path / "log", rows[0]["id"], "fine", None, "ana")
    assert main(["log", str(tmp_path / "log"), "--csv", str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "4 inspections" in out and "anomalous 1, ok 3" in out and "good 2, none 2" in out
    assert "false-alarm rate 50.0%" in out and "p50 0.25" in out and "model abc (version 1): 4" in out
    assert (tmp_path / "out.csv").read_text().count("\n") == 5
