"""What tokens cost: the shipped table of OpenAI's list prices, under the config's own `prices`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import orjson

from ..config.clients import Price, build_prices, snapshot_of
from ..endpoints.usage import Usage

SHIPPED = Path(__file__).with_name("prices.json")  # etc/chatgpt-apiserver/prices.json is the same file


class PriceTable:
    """Prices per model (US dollars per million tokens) and the cost of an answer's usage in nano-dollars."""

    def __init__(self, prices: Mapping[str, Price], as_of: str = "") -> None:
        self.prices = dict(prices)
        self.as_of = as_of  # when the shipped prices were taken

    @classmethod
    def load(cls, overrides: Mapping[str, Price], path: Path = SHIPPED) -> PriceTable:
        """The shipped table, with `overrides` (the config's `prices`) replacing or adding models."""
        document = orjson.loads(path.read_bytes())
        problems: list[str] = []
        shipped = build_prices(document, str(path), problems)
        if problems:  # the shipped file is checked by the tests: this is a broken installation
            raise ValueError("; ".join(problems))
        return cls({**shipped, **overrides}, str(document.get("_as_of", "")))

    def find(self, *names: str) -> Optional[Price]:
        """The price of the first of `names` that has one, trying each without a snapshot date too."""
        prices = self.prices
        for name in names:
            found = prices.get(name)
            if found is None and (base := snapshot_of(name)) is not None:
                found = prices.get(base)
            if found is not None:
                return found
        return None

    @staticmethod
    def nano(price: Price, usage: Usage) -> int:
        """The cost of `usage` in nano-dollars: uncached prompt, cached prompt and completion tokens at
        their prices (a price per million tokens is that many thousand nano-dollars per token)."""
        prompt, completion, cached = usage.prompt, usage.completion, usage.cached
        if not (prompt or completion):
            prompt = usage.tokens  # endpoints that report only a total (some embeddings): prompt tokens
        cached_price = price.cached_input
        if cached_price is None:
            cached_price = price.input
        return round(((prompt - cached) * price.input + cached * cached_price + completion * price.output) * 1000)
