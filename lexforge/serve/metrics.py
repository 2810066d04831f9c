"""Prometheus metrics of one replica (served at ``/metrics``). Ray Serve exports its own
``ray_serve_*`` metrics through the Ray metrics agent in addition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lexforge_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("lexforge_request_latency_seconds", "Request latency (to last byte)",
                                 ["route"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.ttft = Histogram("lexforge_time_to_first_token_seconds", "Time to first streamed token",
                              ["model"], registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.tokens = Counter("lexforge_tokens_total", "Tokens processed", ["model", "kind"], registry=r)
        self.generations = Counter("lexforge_generations_total", "Generations by served model and version",
                                   ["model", "version"], registry=r)
        self.reloads = Counter("lexforge_champion_reloads_total", "Champion reloads", ["result"], registry=r)
        self.champion_version = Gauge("lexforge_champion_info", "Current champion (value 1)",
                                      ["served_name", "version"], registry=r)
        self.inflight = Gauge("lexforge_inflight_requests", "Requests in flight", registry=r)

    def count_tokens(self, model: str, version: str, prompt: int, completion: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)
        self.generations.labels(model, version).inc()

    def set_champion(self, served_name: str, version: str) -> None:
        self.champion_version.clear()
        self.champion_version.labels(served_name, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
