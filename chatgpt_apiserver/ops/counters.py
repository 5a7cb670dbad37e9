"""Per-controller counts of this instance, for the admin view and Prometheus; model labels are bounded.

A model name comes from the client. When a controller declares no `models`, every name a client sends
would otherwise become a counter and a metric label: only the models configured or discovered upstream
(by `GET /v1/models`) get their own, the rest count as `other`, and at most MAX_MODELS names are kept per
controller. Until a controller's models are known, the first FIRST_COME names get a label of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

OTHER = "other"
MAX_MODELS = 256
FIRST_COME = 16


class ControllerStats:
    """Successes, failures, 429s, retries, attempt outcomes and tokens by model, counted in this process."""

    __slots__ = ("failures", "known_models", "labels", "outcomes", "rate_limited", "retries", "successes",
                 "tokens_by_model")

    def __init__(self, models: Optional[Iterable[str]] = None) -> None:
        self.successes = 0
        self.failures = 0
        self.rate_limited = 0
        self.retries = 0
        self.outcomes: dict[str, int] = {}  # ok, client_error, 429, quota, auth, 5xx, timeout, ...: a fixed set
        self.tokens_by_model: dict[str, list[int]] = {}  # label -> [prompt, completion]
        self.labels: set[str] = set()  # the names that have a label of their own (at most MAX_MODELS)
        # Names that get a label of their own: declared models, or those the upstream reported (None: none yet).
        self.known_models: Optional[frozenset[str]] = frozenset(models) if models is not None else None

    def outcome(self, kind: str) -> None:
        """Count one attempt's outcome."""
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1

    def label(self, model: str) -> str:
        """The label `model` is counted under (and the scope of its breaker): once a name has one, it keeps it."""
        labels = self.labels
        if model in labels:
            return model
        known = self.known_models
        if known is None:
            if len(labels) >= FIRST_COME:
                return OTHER
        elif model not in known or len(labels) >= MAX_MODELS:
            return OTHER
        labels.add(model)
        return model

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        """Count the tokens of one answer."""
        label = self.label(model)
        counts = self.tokens_by_model.get(label)
        if counts is None:
            counts = self.tokens_by_model[label] = [0, 0]
        counts[0] += prompt
        counts[1] += completion

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over every model."""
        return sum(counts[0] for counts in self.tokens_by_model.values())

    @property
    def completion_tokens(self) -> int:
        """Completion tokens over every model."""
        return sum(counts[1] for counts in self.tokens_by_model.values())

    def as_dict(self) -> dict[str, int]:
        """The admin view's counts."""
        return {"successes": self.successes, "failures": self.failures, "rate_limited": self.rate_limited,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
