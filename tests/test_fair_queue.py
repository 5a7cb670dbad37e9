"""The fair queue on its own: service order by class, shares and arrival; leaving at any time; bounded."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from chatgpt_apiserver.scheduling.fair_queue import FairQueue, Tenant

CHAT = Tenant("chat")
BATCH = Tenant("batch-job", batch=True)


@dataclass(eq=False)
class Item:
    tenant: Tenant
    label: str = ""
    finish: float = field(default=0.0)
    seq: int = 0


def push(queue: FairQueue[Item], tenant: Tenant, count: int) -> list[Item]:
    items = [Item(tenant, f"{tenant.name}{index}") for index in range(count)]
    for item in items:
        queue.push(item)
    return items


def serve_all(queue: FairQueue[Item]) -> list[str]:
    """Serve the queue head by head, as the scheduler does when every waiter can be admitted."""
    order = []
    while queue:
        head = queue.first()
        assert head is not None
        queue.remove(head, served=True)
        order.append(head.label)
    return order


def test_one_tenant_is_first_in_first_out() -> None:
    queue: FairQueue[Item] = FairQueue()
    push(queue, CHAT, 5)
    assert [item.label for item in queue] == [f"chat{i}" for i in range(5)]
    assert serve_all(queue) == [f"chat{i}" for i in range(5)]


def test_interactive_goes_before_batch_whenever_it_came() -> None:
    queue: FairQueue[Item] = FairQueue()
    push(queue, BATCH, 200)
    push(queue, CHAT, 3)
    assert [item.label for item in queue][:4] == ["chat0", "chat1", "chat2", "batch-job0"]
    assert queue.waiting(BATCH) == 200 and queue.waiting(CHAT) == 3 and len(queue) == 203


def test_shares_three_to_one_while_both_keep_the_queue_full() -> None:
    queue: FairQueue[Item] = FairQueue()
    heavy, light = Tenant("heavy", share=3), Tenant("light", share=1)
    push(queue, heavy, 60)
    push(queue, light, 60)
    first_40 = serve_all(queue)[:40]
    assert sum(label.startswith("heavy") for label in first_40) == 30
    assert sum(label.startswith("light") for label in first_40) == 10


def test_a_newcomer_waits_its_fair_turn_not_behind_a_flood() -> None:
    queue: FairQueue[Item] = FairQueue()
    push(queue, Tenant("flood"), 100)
    for _ in range(10):  # the flood has been served for a while: the class's clock moved on
        head = queue.first()
        assert head is not None
        queue.remove(head, served=True)
    push(queue, Tenant("newcomer"), 1)
    order = [item.label for item in queue]
    assert order.index("newcomer0") <= 1  # behind at most the flood's request of the same finish time


def test_items_may_leave_anywhere_and_while_iterating() -> None:
    queue: FairQueue[Item] = FairQueue()
    a = push(queue, Tenant("a"), 4)
    b = push(queue, Tenant("b"), 4)
    assert queue.remove(a[2]) and not queue.remove(a[2])
    seen = []
    for item in queue:
        seen.append(item.label)
        queue.remove(item, served=True)  # what the scheduler does with an admitted waiter
        if item is b[0]:
            queue.remove(b[1])  # another waiter timed out meanwhile
    assert seen == ["a0", "b0", "a1", "b2", "a3", "b3"]
    assert not queue and queue.first() is None


def test_an_idle_tenant_saves_up_no_turns() -> None:
    queue: FairQueue[Item] = FairQueue()
    push(queue, Tenant("busy"), 50)
    for _ in range(20):
        head = queue.first()
        assert head is not None
        queue.remove(head, served=True)
    push(queue, Tenant("idle"), 10)  # idle until now: it starts at the clock, it does not take 20 turns
    order = [item.label for item in queue][:10]
    assert 4 <= sum(label.startswith("idle") for label in order) <= 6


def test_the_heap_of_line_heads_stays_bounded_under_churn() -> None:
    queue: FairQueue[Item] = FairQueue()
    rng = random.Random(7)
    tenants = [Tenant(f"t{i}", batch=i % 2 == 1, share=1 + i % 3) for i in range(50)]
    live: list[Item] = []
    for _ in range(20_000):
        if live and rng.random() < 0.5:
            item = live.pop(rng.randrange(len(live)))
            assert queue.remove(item, served=rng.random() < 0.5)
        else:
            live.append(push(queue, rng.choice(tenants), 1)[0])
    assert len(queue) == len(live)
    assert sorted(id(item) for item in queue) == sorted(id(item) for item in live)
    for klass in queue._classes:  # stale entries are dropped once they outnumber the lines by far
        assert len(klass.heads) <= 2 * 50 + 64 + 1


def test_walking_the_queue_gives_the_order_it_is_served_in_even_with_stale_heads() -> None:
    rng = random.Random(11)
    tenants = [Tenant(f"t{i}", batch=i % 3 == 0, share=1 + i % 4) for i in range(200)]
    walked: FairQueue[Item] = FairQueue()
    served: FairQueue[Item] = FairQueue()
    twins: dict[str, tuple[Item, Item]] = {}
    lines: dict[str, list[str]] = {}
    for step in range(3000):
        tenant = rng.choice(tenants)
        label = f"{tenant.name}-{step}"
        twins[label] = (Item(tenant, label), Item(tenant, label))
        walked.push(twins[label][0])
        served.push(twins[label][1])
        lines.setdefault(tenant.name, []).append(label)
        if rng.random() < 0.3:  # a line's head leaves (a timeout): its entry in the heap of heads goes stale
            line = lines[rng.choice(sorted(name for name, labels in lines.items() if labels))]
            gone = twins[line.pop(0)]
            assert walked.remove(gone[0]) and served.remove(gone[1])
    stale = sum(1 for klass in walked._classes for entry in klass.heads
                if not entry[3] or entry[3][0] is not entry[2])
    assert stale > 10  # the walk below meets stale entries
    order = [item.label for item in walked]
    assert len(order) == len(walked) == len(served) and order == serve_all(served)


def test_a_tenant_moved_to_the_other_class_by_a_reload_waits_in_that_class() -> None:
    queue: FairQueue[Item] = FairQueue()
    push(queue, Tenant("team"), 2)  # waiting as an interactive client when a reload makes it a batch one
    push(queue, Tenant("nightly", batch=True), 2)
    moved = Tenant("team", batch=True)
    for index in range(2):
        queue.push(Item(moved, f"moved{index}"))
    assert queue.waiting(Tenant("team")) == 2 and queue.waiting(moved) == 2
    # Its new requests take their batch turns, between the other batch client's; its earlier ones keep theirs.
    assert [item.label for item in queue] == ["team0", "team1", "nightly0", "moved0", "nightly1", "moved1"]
    assert serve_all(queue) == ["team0", "team1", "nightly0", "moved0", "nightly1", "moved1"]
