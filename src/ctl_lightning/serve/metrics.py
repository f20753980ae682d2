"""Prometheus metrics of one server (its own registry, so several apps in a process do not mix).

``GET /metrics`` serves them in Prometheus' text format: requests by route and status, latency
histograms by route, the catalog's size, the model's fingerprint, image forward passes and their
batch sizes, and reloads by outcome.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ctl_serve_requests", "HTTP requests answered", ["method", "route", "status"], registry=r)
        self.latency = Histogram("ctl_serve_request_seconds", "time to answer a request", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.products = Gauge("ctl_serve_catalog_products", "products in the served catalogs", registry=r)
        self.model = Info("ctl_serve_model", "the served run and the fingerprint of the model weights behind its catalogs", registry=r)
        self.batches = Counter("ctl_serve_embed_batches", "forward passes of the image embedder", registry=r)
        self.batch_size = Histogram(
            "ctl_serve_embed_batch_size", "image queries per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.reloads = Counter("ctl_serve_reloads", "POST /admin/reload by outcome", ["result"], registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batches.inc()
        self.batch_size.observe(size)

    def serving(self, run: str, products: int, fingerprint: str) -> None:
        self.products.set(products)
        self.model.info({"run": run, "fingerprint": fingerprint})

    def render(self) -> bytes:
        return generate_latest(self.registry)
