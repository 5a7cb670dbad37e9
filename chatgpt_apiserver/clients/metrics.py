"""This instance's counts per client and model, and the Prometheus metrics of clients (label `client`: names
only, never keys). Prometheus sums instances; `GET /admin/clients` shows the store's totals instead."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .store import Charge, add_row

if TYPE_CHECKING:
    from .registry import Client

PREFIX = "chatgpt_apiserver_client"


class Tally:
    """Refusals per client and reason counted in this process, and usage rows per client and model when the
    store's own rows are not this process's (with Redis; a store in this process needs no second copy)."""

    def __init__(self) -> None:
        self.usage: dict[str, dict[str, list[int]]] = {}  # client -> label -> USAGE_FIELDS
        self.refusals: dict[str, dict[str, int]] = {}  # client -> reason -> count

    def count(self, client: str, charge: Charge) -> None:
        """One settled request (rule C5's row, bounded the same way)."""
        rows = self.usage.get(client)
        if rows is None:
            rows = self.usage[client] = {}
        add_row(rows, charge.label, charge.row)

    def refused(self, client: str, reason: str) -> None:
        """A request refused by the client's own limits (reason: model, budget, busy, requests, tokens, ...)."""
        reasons = self.refusals.get(client)
        if reasons is None:
            reasons = self.refusals[client] = {}
        reasons[reason] = reasons.get(reason, 0) + 1

    def forget(self, names: Iterable[str]) -> None:
        """Drop the counts of clients a reload removed (their label values leave the metrics)."""
        for name in names:
            self.usage.pop(name, None)
            self.refusals.pop(name, None)


class ClientCollector(Collector):
    """Client metrics, read from the tally and the clients' live state at scrape time."""

    def __init__(self, tally: Tally, usage: Callable[[], Mapping[str, Mapping[str, list[int]]]],
                 clients: Callable[[], Mapping[str, Client]], in_flight: Callable[[str], int],
                 waiting: Callable[[Client], int],
                 budgets: Callable[[], Iterable[tuple[str, str, float, float]]]) -> None:
        self.tally = tally
        self.usage = usage  # this process's rows per client (the tally's, or those of a store in this process)
        self.clients = clients
        self.in_flight = in_flight
        self.waiting = waiting
        self.budgets = budgets  # (client, "tokens" or "usd", spent, budget) as this instance last saw them

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests admitted, by client and model.",
                                       labels=["client", "model"])
        errors = CounterMetricFamily(f"{PREFIX}_errors", "Admitted requests that ended in an error.",
                                     labels=["client", "model"])
        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens used, by client, model and kind.",
                                     labels=["client", "model", "kind"])
        cost = CounterMetricFamily(f"{PREFIX}_cost_usd", "Cost at the price table, by client and model.",
                                   labels=["client", "model"])
        refused = CounterMetricFamily(f"{PREFIX}_refused", "Requests refused by the client's own limits, by "
                                      "reason (model, budget, busy, requests, tokens, model_requests, model_tokens).",
                                      labels=["client", "reason"])
        for name, rows in sorted(self.usage().items()):
            for label, row in sorted(rows.items()):
                requests.add_metric([name, label], row[0])
                errors.add_metric([name, label], row[1])
                tokens.add_metric([name, label, "prompt"], row[2])
                tokens.add_metric([name, label, "cached"], row[3])
                tokens.add_metric([name, label, "completion"], row[4])
                cost.add_metric([name, label], row[5] / 1e9)
        for name, reasons in sorted(self.tally.refusals.items()):
            for reason, count in sorted(reasons.items()):
                refused.add_metric([name, reason], count)
        in_flight = GaugeMetricFamily(f"{PREFIX}_in_flight", "Requests of the client this instance handles now.",
                                      labels=["client"])
        waiting = GaugeMetricFamily(f"{PREFIX}_queue_length", "Requests of the client waiting for a controller.",
                                    labels=["client"])
        for name, client in sorted(self.clients().items()):
            in_flight.add_metric([name], self.in_flight(name))
            waiting.add_metric([name], self.waiting(client))
        spent = GaugeMetricFamily(f"{PREFIX}_budget_spent", "Spent in the budget's current period, as this "
                                  "instance last saw it (tokens, or US dollars).", labels=["client", "kind"])
        limit = GaugeMetricFamily(f"{PREFIX}_budget", "The budget per period (tokens, or US dollars).",
                                  labels=["client", "kind"])
        for name, kind, used, budget in self.budgets():
            spent.add_metric([name, kind], used)
            limit.add_metric([name, kind], budget)
        yield from (requests, errors, tokens, cost, refused, in_flight, waiting, spent, limit)
