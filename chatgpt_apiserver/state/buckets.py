"""Token buckets, with time injected for exact tests."""

from __future__ import annotations

from typing import Optional


class TokenBucket:
    """Refills continuously at `per_minute / 60` per second up to `capacity`; may go below zero when settled."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, burst: Optional[float] = None, now: float = 0.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else per_minute)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> float:
        """Bring the level up to `now` and return it."""
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
        return self.level

    def has(self, amount: float, now: float) -> bool:
        """Whether `amount` could be taken now."""
        return self.refill(now) >= min(amount, self.capacity)

    def take(self, amount: float, now: float) -> None:
        """Remove `amount` (check `has` first); a request larger than the capacity empties the bucket."""
        self.refill(now)
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        """Return `amount` (a reservation that was larger than what was used)."""
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 if now)."""
        missing = min(amount, self.capacity) - self.refill(now)
        if missing <= 0:
            return 0.0
        return missing / self.rate if self.rate > 0 else float("inf")

    def correct(self, remaining: Optional[float], limit: Optional[float], age: float, now: float) -> None:
        """Believe the upstream (rules R2): never a higher limit than it has, and never more left than it
        said `age` seconds ago plus what has refilled since."""
        self.refill(now)
        if limit is not None and 0 < limit < self.capacity:
            self.rate = self.rate * limit / self.capacity
            self.capacity = limit
            self.level = min(self.level, limit)
        if remaining is not None:
            self.level = min(self.level, remaining + max(0.0, age) * self.rate)

    def fraction(self, now: float) -> float:
        """Level over capacity, 0..1."""
        return max(0.0, self.refill(now)) / self.capacity if self.capacity else 0.0
