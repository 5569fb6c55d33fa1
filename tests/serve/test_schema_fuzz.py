"""A bounded schemathesis run against /openapi.json on a live server with an inspection log: every route, a
fixed small example budget (well under 60 s in all); no response may be a 500 or violate its schema."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

EXAMPLES = 25  # per route (about 10 s for every route on a 2-core machine)


def test_no_server_error_and_schema_conformance(live_server, served_model, tmp_path) -> None:
    import time

    from hypothesis import given

    srv = live_server(log_dir=str(tmp_path / "log"), keep_images="all", max_images=2)
    for p in (served_model.good[0], served_model.defect[0]):  # rows to find, kept images to serve
        assert httpx.post(srv.url + "/v1/predict", content=p.read_bytes(), headers={"content-type": "image/png"},
                          timeout=60).status_code == 200
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    t0, seen = time.monotonic(), []
    for result in schema.get_all_operations():
        op = result.ok()
        seen.append(f"{op.method.upper()} {op.path}")

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(timeout=60)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        check()
    expected = {f"{m.upper()} {path}" for path, item in httpx.get(srv.url + "/openapi.json").json()["paths"].items()
                for m in item}
    assert set(seen) == expected and len(seen) >= 10  # every route
    assert time.monotonic() - t0 < 60
    from prometheus_client.parser import text_string_to_metric_families

    calls = sum(s.value for fam in text_string_to_metric_families(httpx.get(srv.url + "/metrics").text)
                for s in fam.samples if s.name == "flawmap_requests_total")
    assert calls >= 2 * len(seen), calls  # the examples really reached the server
    print(f"{len(seen)} routes, {calls:.0f} requests in {time.monotonic() - t0:.1f} s")
