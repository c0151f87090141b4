"""Prometheus metrics under vLLM's names, so routers and dashboards built for vLLM
(load balancers reading vllm:num_requests_waiting or kv_cache_usage_perc, Grafana
boards) work unchanged.

Engine-wide numbers come from the engine's stats messages: gauges and
cumulative counters are exported as last reported (a custom collector, since
the engine, not this process, owns the totals), and the per-request latency
samples each message carries are observed into histograms here.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0)

# (metric name, EngineStats field, help)
_GAUGES = [
    ("vllm:num_requests_running", "num_running", "Requests running in the engine."),
    ("vllm:num_requests_waiting", "num_waiting", "Requests waiting for a slot in the engine."),
]
_COUNTERS = [
    ("vllm:prompt_tokens", "prompt_tokens_total", "Prompt tokens processed."),
    ("vllm:generation_tokens", "generation_tokens_total", "Tokens generated."),
    ("vllm:num_preemptions", "num_preempted_total", "Requests preempted (KV cache full)."),
    ("vllm:prefix_cache_queries", "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
    ("vllm:prefix_cache_hits", "prefix_cache_hits", "Prompt tokens found in the prefix cache."),
]


class Metrics:
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.stats: dict = {}
        self.engine_up = False
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=_TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between output tokens.",
                             labels, buckets=_ITL_BUCKETS, registry=self.registry)
        # The name older vLLM versions (and many dashboards) use for the same samples.
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Time per output token.",
                              labels, buckets=_ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.",
                             labels, buckets=_E2E_BUCKETS, registry=self.registry)
        self.success = Counter("vllm:request_success", "Finished requests by finish reason.",
                               labels + ["finished_reason"], registry=self.registry)
        self.registry.register(_EngineCollector(self))

    def set_model_name(self, name: str) -> None:
        self.model_name = name

    def update(self, stats: dict) -> None:
        """One stats message from the engine."""
        self.stats = stats
        m = self.model_name
        for x in stats.get("ttft_seconds", ()):
            self.ttft.labels(m).observe(x)
        for x in stats.get("inter_token_seconds", ()):
            self.itl.labels(m).observe(x)
            self.tpot.labels(m).observe(x)
        for x in stats.get("e2e_seconds", ()):
            self.e2e.labels(m).observe(x)

    def finished(self, reason: str | None) -> None:
        self.success.labels(self.model_name, reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self):
        s, labels = self.m.stats, [self.m.model_name]
        for name, field, doc in _GAUGES:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(labels, float(s.get(field, 0)))
            yield g
        used, total = s.get("kv_blocks_used", 0), s.get("kv_blocks_total", 0)
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            g = GaugeMetricFamily(name, "Fraction of KV-cache blocks in use (0..1).",
                                  labels=["model_name"])
            g.add_metric(labels, used / total if total else 0.0)
            yield g
        for name, field, doc in _COUNTERS:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(labels, float(s.get(field, 0)))
            yield c
        up = GaugeMetricFamily("rustinfer:engine_up", "1 while the engine process answers.")
        up.add_metric([], 1.0 if self.m.engine_up else 0.0)
        yield up
