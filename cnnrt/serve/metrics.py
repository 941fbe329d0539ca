"""/metrics in the Prometheus text format, through prometheus_client with a registry per app.

Labels take only bounded values: a model label is a served model's name or "(unknown)", never a
name a client made up, and the endpoint label is the route's name, not the path.
"""
from __future__ import annotations

UNKNOWN_MODEL = "(unknown)"

# images per backend call; seconds per request and per backend call
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, sessions: dict):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cnnrt_requests", "HTTP requests to the inference endpoints, by model, endpoint and status code",
                                ["model", "endpoint", "code"], registry=r)
        self.latency = Histogram("cnnrt_request_duration_seconds", "Time from the request's arrival to its answer",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("cnnrt_images", "Images run through the backend", ["model"], registry=r)
        self.batches = Histogram("cnnrt_batch_size", "Images per backend call (dynamic batches)",
                                 ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("cnnrt_batch_requests", "Requests per backend call",
                                        ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.backend_seconds = Histogram("cnnrt_backend_duration_seconds", "Time of one backend call",
                                         ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.pending = Gauge("cnnrt_pending_requests", "Requests waiting for or in a backend call",
                             ["model"], registry=r)
        info = Gauge("cnnrt_model_info", "The served models and what runs them (value is always 1)",
                     ["model", "backend", "precision"], registry=r)
        for name, s in sessions.items():
            info.labels(name, s.backend, s.precision).set(1)

    def on_batch(self, model: str):
        def record(images: int, requests: int, seconds: float) -> None:
            self.images.labels(model).inc(images)
            self.batches.labels(model).observe(images)
            self.batch_requests.labels(model).observe(requests)
            self.backend_seconds.labels(model).observe(seconds)
        return record

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
