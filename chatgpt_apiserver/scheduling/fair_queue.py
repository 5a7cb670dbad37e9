"""The waiting queue, served client by client: interactive before batch, and within a class weighted fair
queueing by each client's share.

Every client (a *tenant*) has its own first-in-first-out line. When a request joins, it gets a virtual finish
time: `1 / share` after the finish time of the client's last waiting request, or, when none of its requests
waits, after the class's virtual clock (the finish time of the request its class last served: self-clocked
fair queueing). The queue is served in order of class, then finish time, then arrival. So a client that
floods the queue only pushes its own later requests back: another client's request is served after at most
its fair turn, and two clients that both keep the queue full are served in the ratio of their shares.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Optional, Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who a request waits for: its client's name, class and share, and how many of its requests may wait."""

    name: str = ""
    batch: bool = False
    share: float = 1.0
    max_waiting: Optional[int] = None  # None: only the queue's own bound


ANONYMOUS = Tenant()


class Queued(Protocol):
    """What the queue needs of a waiting request: room for its place in the order."""

    tenant: Tenant
    finish: float
    seq: int


Q = TypeVar("Q", bound=Queued)


class _Class(Generic[Q]):
    """The lines of one class: a heap of each line's first request, and the class's virtual clock."""

    __slots__ = ("clock", "heads")

    def __init__(self) -> None:
        self.clock = 0.0
        self.heads: list[tuple[float, int, Q, deque[Q]]] = []  # may hold stale entries: checked when read


class FairQueue(Generic[Q]):
    """Waiting requests in service order (see the module docstring). Any of them may leave at any time."""

    def __init__(self) -> None:
        self._classes: tuple[_Class[Q], _Class[Q]] = (_Class(), _Class())  # interactive, batch
        # (class, tenant name) -> its waiting requests (only tenants with some). The class is part of the key: a
        # reload that moves a client to the other class while its requests wait starts it a line there.
        self._lines: dict[tuple[bool, str], deque[Q]] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def waiting(self, tenant: Tenant) -> int:
        """Requests of `tenant` waiting now."""
        line = self._lines.get((tenant.batch, tenant.name))
        return len(line) if line is not None else 0

    def push(self, item: Q) -> None:
        """Join the queue: the item's place is its class, then its virtual finish time, then its arrival.

        A tenant with requests waiting starts this one where its last one finishes; one with none starts at
        the class's clock (an idle tenant neither saves up turns nor owes any).
        """
        tenant = item.tenant
        klass = self._classes[tenant.batch]
        key = (tenant.batch, tenant.name)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = deque()
        start = line[-1].finish if line else klass.clock
        item.finish = start + 1.0 / tenant.share
        item.seq = next(self._seq)
        line.append(item)
        self._size += 1
        if len(line) == 1:
            heapq.heappush(klass.heads, (item.finish, item.seq, item, line))

    def remove(self, item: Q, served: bool = False) -> bool:
        """Take `item` out; `served`: it got its turn, and the class's clock moves to its finish time.
        False if it was not waiting."""
        tenant = item.tenant
        line = self._lines.get((tenant.batch, tenant.name))
        if line is None:
            return False
        klass = self._classes[tenant.batch]
        if line[0] is item:
            line.popleft()
            if line:
                head = line[0]
                heapq.heappush(klass.heads, (head.finish, head.seq, head, line))
        else:
            try:
                line.remove(item)
            except ValueError:
                return False
        if served and item.finish > klass.clock:
            klass.clock = item.finish
        if not line:
            del self._lines[(tenant.batch, tenant.name)]
        self._size -= 1
        self._tidy(klass)
        return True

    def _tidy(self, klass: _Class[Q]) -> None:
        """Drop stale entries from the top of a class's heap; rebuild it when stale ones pile up below."""
        heads = klass.heads
        while heads and not _current(heads[0]):
            heapq.heappop(heads)
        if len(heads) > 2 * len(self._lines) + 64:
            klass.heads = [entry for entry in heads if _current(entry)]
            heapq.heapify(klass.heads)

    def __iter__(self) -> Iterator[Q]:
        """Every waiting item in service order. A line is copied when the order reaches it, so items may leave
        (or join) while the caller iterates; an item the caller took out is not seen twice.

        The heap of line heads is walked in order through a copy (children after parents), without building
        another heap of every line: a pass that looks at the first k items costs O(k log k), however many
        clients wait.
        """
        tiebreak = itertools.count()
        for klass in self._classes:
            heads = list(klass.heads)  # a heap: heads[i] comes before heads[2i+1] and heads[2i+2]
            if not heads:
                continue
            entered: set[int] = set()  # lines this pass follows already
            # (finish, seq, tiebreak, index into heads or -1, the item, its line, a copy of the line, index in it);
            # an entry with no copy is a line's head: the rest of the line is copied once it has been seen.
            order: list[tuple[float, int, int, int, Optional[Q], deque[Q], tuple[Q, ...], int]] = [
                (heads[0][0], heads[0][1], next(tiebreak), 0, None, heads[0][3], (), 0)]
            while order:
                _finish, _seq, _, at, item, line, copy, index = heapq.heappop(order)
                if at >= 0:
                    for child in (2 * at + 1, 2 * at + 2):
                        if child < len(heads):
                            entry = heads[child]
                            heapq.heappush(order, (entry[0], entry[1], next(tiebreak), child, None, entry[3], (), 0))
                    item = heads[at][2]
                    if not line or id(line) in entered:
                        continue  # a stale entry, or a line followed already
                    entered.add(id(line))
                if not copy:  # a line's head
                    assert item is not None
                    if not line:
                        continue
                    if line[0] is not item:  # it left: the line goes on from its present head, in its turn
                        head = line[0]
                        heapq.heappush(order, (head.finish, head.seq, next(tiebreak), -1, head, line, (), 0))
                        continue
                    yield item
                    copy = tuple(line)  # the rest of the line as it is now
                    index = 0 if copy and copy[0] is item else -1
                else:
                    yield copy[index]
                index += 1
                if index < len(copy):
                    nxt = copy[index]
                    heapq.heappush(order, (nxt.finish, nxt.seq, next(tiebreak), -1, nxt, line, copy, index))

    def first(self) -> Optional[Q]:
        """The item served next, if any."""
        for klass in self._classes:
            self._tidy(klass)
            if klass.heads:
                return klass.heads[0][2]
        return None


def _current(entry: tuple[float, int, Q, deque[Q]]) -> bool:
    line = entry[3]
    return bool(line) and line[0] is entry[2]
