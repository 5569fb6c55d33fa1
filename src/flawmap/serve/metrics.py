"""``GET /metrics``: Prometheus text format (``prometheus-client``), one registry per app.

Counters and histograms are updated on the request path; gauges that describe a state (queue depth, log
writer lag, drift) are read when Prometheus scrapes. Every series about a model carries its ``model_id``.
"""

from __future__ import annotations

from typing import Any, Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """The service's series; ``state()`` returns the values of the gauges at scrape time."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self._state = state
        self.requests = Counter("flawmap_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.images = Counter("flawmap_images", "Images scored by verdict", ["verdict", "model_id"], registry=r)
        self.latency = Histogram("flawmap_request_latency_seconds", "Server time of a scoring request", ["model_id"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("flawmap_batch_size", "Images per forward pass, one observation per image",
                               ["model_id"], buckets=BATCH_BUCKETS, registry=r)
        self.queue = Gauge("flawmap_queue_depth", "Images waiting for a forward pass", registry=r)
        self.log_lag = Gauge("flawmap_log_writer_lag_rows", "Inspection rows waiting for the log writer", registry=r)
        self.log_dropped = Gauge("flawmap_log_dropped_rows", "Inspection rows not logged (queue full or "
                                 "unwritable folder)", registry=r)
        self.log_rows = Gauge("flawmap_log_rows", "Inspection rows committed by this process", registry=r)
        self.model = Gauge("flawmap_model_info", "The served model (value 1)", ["model_id", "method", "version"],
                           registry=r)
        self.reloads = Counter("flawmap_model_reloads", "Model reloads by result", ["result"], registry=r)
        self.drift_share = Gauge("flawmap_drift_flagged_share", "Share of the window's images flagged anomalous",
                                 ["model_id"], registry=r)
        self.drift_low = Gauge("flawmap_drift_flagged_share_low", "95% Wilson interval of the flagged share, low",
                               ["model_id"], registry=r)
        self.drift_high = Gauge("flawmap_drift_flagged_share_high", "95% Wilson interval of the flagged share, high",
                                ["model_id"], registry=r)
        self.drift_target = Gauge("flawmap_drift_target_fpr", "The calibrated false-alarm target", ["model_id"],
                                  registry=r)
        self.drift_ks = Gauge("flawmap_drift_ks_statistic", "KS statistic: window scores vs calibration scores",
                              ["model_id"], registry=r)
        self.drift_warn = Gauge("flawmap_drift_warn", "1 when the drift status is warn", ["model_id"], registry=r)
        self.drift_n = Gauge("flawmap_drift_window_images", "Images in the drift window", ["model_id"], registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        s = self._state()
        self.queue.set(s["queue_depth"])
        self.log_lag.set(s["log_lag"])
        self.log_dropped.set(s["log_dropped"])
        self.log_rows.set(s["log_rows"])
        self.model.clear()
        mid = s.get("model_id")
        if mid is not None:
            self.model.labels(mid, s["method"], str(s["version"])).set(1)
            d = s["drift"]
            for gauge in (self.drift_share, self.drift_low, self.drift_high, self.drift_target, self.drift_ks,
                          self.drift_warn, self.drift_n):
                gauge.clear()
            nan = float("nan")
            self.drift_n.labels(mid).set(d["n"])
            self.drift_warn.labels(mid).set(1 if d["status"] == "warn" else 0)
            self.drift_share.labels(mid).set(nan if d["flagged_share"] is None else d["flagged_share"])
            lo, hi = d["interval"] or (nan, nan)
            self.drift_low.labels(mid).set(lo)
            self.drift_high.labels(mid).set(hi)
            self.drift_target.labels(mid).set(nan if d["target_fpr"] is None else d["target_fpr"])
            self.drift_ks.labels(mid).set(nan if d["ks"] is None else d["ks"])
        return generate_latest(self.registry)
