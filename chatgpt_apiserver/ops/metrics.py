"""Prometheus metrics: histograms observed on the hot path, everything else read at scrape time.

Controller state comes from the store's views (with Redis, the shared truth), read at most once a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..controllers import Controller
    from ..state.store import ControllerView

Views = Callable[[], "dict[str, ControllerView]"]

PREFIX = "chatgpt_apiserver"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STATES = ("ok", "cooling", "disabled", "ejected", "probing")


class Metrics:
    """One registry per gateway; label values are controller names, routes and models, never keys."""

    def __init__(self, controllers: Callable[[], Sequence[Controller]], in_flight: Callable[[], int],
                 queue_length: Callable[[], int], views: Views) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Time from request to last byte.",
                                 ["route"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time from request to a stream's first event.",
                              registry=self.registry, buckets=LATENCY_BUCKETS)
        self.queue_wait = Histogram(f"{PREFIX}_queue_wait_seconds", "Time requests waited for a controller with room.",
                                    registry=self.registry, buckets=LATENCY_BUCKETS)
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self._latency_by_route: dict[str, Histogram] = {}
        self.registry.register(_StateCollector(self, controllers, in_flight, queue_length, views))

    def request_done(self, route: str, status: int, controller: str, seconds: float) -> None:
        """Count one finished request and observe its latency."""
        self.requests[(route, str(status), controller)] += 1
        child = self._latency_by_route.get(route)
        if child is None:
            child = self._latency_by_route[route] = self.latency.labels(route)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, metrics: Metrics, controllers: Callable[[], Sequence[Controller]],
                 in_flight: Callable[[], int], queue_length: Callable[[], int], views: Views) -> None:
        self.metrics = metrics
        self.controllers = controllers
        self.in_flight = in_flight
        self.queue_length = queue_length
        self.views = views  # the controllers' state as the store last reported it

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests by route, status and controller.",
                                       labels=["route", "status", "controller"])
        for (route, status, name), count in sorted(self.metrics.requests.items()):
            requests.add_metric([route, status, name], count)
        yield requests
        attempts = CounterMetricFamily(f"{PREFIX}_upstream_attempts", "Upstream attempts by controller and outcome.",
                                       labels=["controller", "outcome"])
        retries = CounterMetricFamily(f"{PREFIX}_upstream_retries", "Attempts that were retries, by controller.",
                                      labels=["controller"])
        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens used, by controller, model and kind.",
                                     labels=["controller", "model", "kind"])
        in_flight = GaugeMetricFamily(f"{PREFIX}_controller_in_flight", "Requests in flight per controller.",
                                      labels=["controller"])
        level = GaugeMetricFamily(f"{PREFIX}_controller_bucket_level", "Bucket level now.",
                                  labels=["controller", "bucket"])
        capacity = GaugeMetricFamily(f"{PREFIX}_controller_bucket_capacity", "Bucket capacity (its limit).",
                                     labels=["controller", "bucket"])
        state = GaugeMetricFamily(f"{PREFIX}_controller_state", "1 for the controller's current state.",
                                  labels=["controller", "state"])
        cooldown = GaugeMetricFamily(f"{PREFIX}_controller_cooldown_seconds",
                                     "Seconds until the controller's cooldown, disable or ejection ends.",
                                     labels=["controller"])
        views = self.views()
        for controller in self.controllers():
            name = controller.name
            stats = controller.stats
            for outcome, count in sorted(stats.outcomes.items()):
                attempts.add_metric([name, outcome], count)
            retries.add_metric([name], stats.retries)
            for model, (prompt, completion) in sorted(stats.tokens_by_model.items()):
                tokens.add_metric([name, model, "prompt"], prompt)
                tokens.add_metric([name, model, "completion"], completion)
            view = views.get(name)
            if view is None:
                continue
            in_flight.add_metric([name], view.in_flight)
            for label, bucket in view.buckets.items():
                level.add_metric([name, label], bucket.level)
                capacity.add_metric([name, label], bucket.capacity)
            for candidate in STATES:
                state.add_metric([name, candidate], 1.0 if candidate == view.status else 0.0)
            cooldown.add_metric([name], view.wait if view.status != "ok" else 0.0)
        yield from (attempts, retries, tokens, in_flight, level, capacity, state, cooldown)
        yield GaugeMetricFamily(f"{PREFIX}_requests_in_flight", "Requests in flight.", value=self.in_flight())
        yield GaugeMetricFamily(f"{PREFIX}_queue_length", "Requests waiting for a controller.",
                                value=self.queue_length())
