"""Getting an answer: which controllers may serve a call, and trying them until one replies, all before any
byte is sent to the client.

A call for a model goes to the controllers that serve the model and the endpoint, with failover. A call that
names a stored response or conversation goes to the controller that holds it (its state group), which the
affinity map knows; an id nobody has seen yet is looked for, in the pool's order, until a controller
answers something other than 404.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Optional

from ..call import Call
from ..controllers import Controller
from ..endpoints.catalog import MAX_RESERVATION
from ..errors import ApiError
from ..gateway import Gateway
from ..scheduling.fair_queue import ANONYMOUS, Tenant
from ..state.store import UNAVAILABLE
from .attempts import Answer, Failure, attempt

log = logging.getLogger("chatgpt_apiserver.relay")

RELAYED_HEADERS = ("openai-processing-ms", "openai-version")


def candidates_for(gateway: Gateway, call: Call) -> list[Controller]:
    """The controllers that serve the call's endpoint (and model); a 404 saying which is missing if none."""
    endpoint = call.endpoint
    able = [c for c in gateway.controllers if c.supports(endpoint)]
    if call.model:
        serving = [c for c in able if c.serves(call.model)]
        if serving:
            return serving
        if any(c.serves(call.model) for c in gateway.controllers):
            raise ApiError(404, f"No controller that serves the model {call.model!r} serves "
                                f"{endpoint.method} {endpoint.public_path}.", param="model", code="model_not_found")
        raise ApiError(404, f"The model {call.model!r} is not served by this gateway.",
                       param="model", code="model_not_found")
    if not able:
        raise ApiError(404, f"No controller of this gateway serves {endpoint.method} {endpoint.public_path}.",
                       code="unknown_url")
    if endpoint.model_field is not None and not call.owner_of:
        # The model was left out, as OpenAI allows here: any controller that takes any model may answer.
        open_ended = [c for c in able if c.models is None]
        if not open_ended:
            raise ApiError(400, f"Name the model: every controller of this gateway serves a list of models, so a "
                                f"request to {endpoint.public_path} without one has nowhere to go.",
                           param=endpoint.model_field, code="missing_required_parameter")
        return open_ended
    return able


def group_of(owner: str, candidates: Sequence[Controller]) -> list[Controller]:
    """The controllers that hold what `owner` holds: itself, and those of its state group."""
    found = next((c for c in candidates if c.name == owner), None)
    group = found.spec.state_group if found is not None else None
    if group is None:
        return [found] if found is not None else []
    return [c for c in candidates if c.spec.state_group == group]


async def open_answer(gateway: Gateway, call: Call, tenant: Tenant = ANONYMOUS,
                      admit: Optional[Callable[[float], Awaitable[None]]] = None) -> Answer:
    """Try controllers until one gives a usable reply; raise `ApiError` when none can.

    `admit(tokens)` is the client's own admission: it runs once the call is known to be servable and before
    any controller is asked, and raises the client's refusal. `tenant` is the client's place in the queue.
    """
    candidates = candidates_for(gateway, call)
    estimate = call.endpoint.estimate
    tokens = min(estimate(call.payload, len(call.body), gateway.settings.default_completion_tokens),
                 MAX_RESERVATION) if estimate else 0.0
    if admit is not None:
        await admit(tokens)
    gateway.retries.deposit()
    if call.owner_of:
        owner = await gateway.affinity.owner(call.owner_of)
        holders = group_of(owner, candidates) if owner is not None else []
        if not holders:
            if owner is not None and any(c.name == owner for c in gateway.controllers):
                # The one controller that holds it cannot take this call: no other could answer it.
                raise ApiError(400, f"{call.owner_of} is held by controller {owner}, which does not serve "
                                    f"{call.model or call.endpoint.public_path}.", param="model",
                               code="model_not_served_by_owner")
            return await _search(gateway, call, candidates, tokens, tenant)
        candidates = holders
    return await _failover(gateway, call, candidates, tokens, tenant)


def _learn(gateway: Gateway, call: Call, answer: Answer) -> Answer:
    """Remember who holds the ids an answer made, named, or deleted."""
    if not 200 <= answer.status < 300:
        return answer
    owner = answer.controller.name
    affinity = gateway.affinity
    if call.owner_of:
        if call.endpoint.forgets:
            affinity.forget(call.owner_of)
        else:
            affinity.remember(call.owner_of, owner)
    if answer.created:
        affinity.remember(answer.created, owner)
    return answer


async def _failover(gateway: Gateway, call: Call, candidates: list[Controller], tokens: float,
                    tenant: Tenant) -> Answer:
    scheduler = gateway.scheduler
    label = call.label
    excluded: list[Controller] = []  # failed for reasons a cooldown does not cover
    failures: list[Failure] = []
    for number in range(gateway.settings.max_attempts):
        if len(excluded) == len(candidates):
            break
        if number and not gateway.retries.withdraw():
            log.warning("retry budget exhausted; request %s gives up after %d attempt(s)", call.request_id, number)
            break
        try:
            lease = await scheduler.acquire(label, tokens, excluded, candidates, tenant)
        except ApiError:
            if failures:
                break  # report what the attempts met, not the queue
            raise
        try:
            outcome = await attempt(lease, call, gateway)
        except BaseException:
            lease.release(None)  # the client went away: keep the reservation, the upstream may count it
            raise
        stats = lease.controller.stats
        if number:
            stats.retries += 1
        if isinstance(outcome, Answer):
            stats.outcome("ok" if outcome.status < 400 else "client_error")
            outcome.attempts = number + 1
            return _learn(gateway, call, outcome)
        stats.outcome(outcome.kind)
        lease.release(0)
        failures.append(outcome)
        if outcome.kind != "429":
            excluded.append(lease.controller)  # a 429 cools the controller; it may serve again after
        log.warning("attempt %d on controller %s failed (%s): %s; request %s",
                    number + 1, outcome.controller, outcome.kind, outcome.message, call.request_id)
        if outcome.sent and not gateway.settings.retry_on_timeout:
            # The upstream may still be working on it, and billing it: do not send it again, here or by the SDK.
            raise give_up(failures, call, gateway, candidates, final=True)
    raise give_up(failures, call, gateway, candidates, final=_tried_all(gateway, call.label, candidates, failures))


async def _search(gateway: Gateway, call: Call, candidates: list[Controller], tokens: float,
                  tenant: Tenant) -> Answer:
    """An id nobody has seen: ask each controller in the pool's order until one does not answer 404.

    Bounded by the number of controllers, not by the retry budget: a 404 is an answer, not a failure.
    """
    scheduler = gateway.scheduler
    failures: list[Failure] = []
    missing: Optional[Answer] = None
    for number, controller in enumerate(candidates):
        try:
            lease = await scheduler.acquire(call.label, tokens, (), [controller], tenant)
        except ApiError as error:
            failures.append(Failure(controller.name, "429" if error.status == 429 else "unavailable", error.message))
            continue
        try:
            outcome = await attempt(lease, call, gateway)
        except BaseException:
            lease.release(None)
            if missing is not None:
                missing.close()
            raise
        if isinstance(outcome, Failure):
            lease.controller.stats.outcome(outcome.kind)
            lease.release(0)
            failures.append(outcome)
            continue
        outcome.attempts = number + 1
        if outcome.status == 404:
            lease.controller.stats.outcome("client_error")
            if missing is not None:
                missing.close()
            missing = outcome  # another controller may hold it
            continue
        lease.controller.stats.outcome("ok" if outcome.status < 400 else "client_error")
        if missing is not None:
            missing.close()
        log.info("%s %s is held by controller %s", call.endpoint.route, call.owner_of, controller.name)
        return _learn(gateway, call, outcome)
    if missing is not None:
        return missing  # nobody holds it: the client gets the upstream's own 404
    raise give_up(failures, call, gateway, candidates, final=True)


def give_up(failures: list[Failure], call: Call, gateway: Gateway, candidates: Sequence[Controller],
            final: bool) -> ApiError:
    """The client's error once no attempt produced an answer.

    `final`: the gateway tried every candidate, or must not resend: the SDKs are told not to retry
    (`x-should-retry: false`). `Retry-After` says when a cooldown or an ejection ends.
    """
    error = _give_up(failures, call, gateway, candidates, final)
    error.attempts = len(failures)  # for the access log
    error.controller = failures[-1].controller if failures else ""
    return error


def _give_up(failures: list[Failure], call: Call, gateway: Gateway, candidates: Sequence[Controller],
             final: bool) -> ApiError:
    summary = "; ".join(f"{f.controller}: {f.message}" for f in failures) or "no attempt was possible"
    kinds = {f.kind for f in failures}
    headers = {"x-should-retry": "false"} if final else {}
    wait = _earliest_return(gateway, call.label, candidates, failures)
    if wait is not None:
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    what = f"model {call.model!r}" if call.model else f"{call.endpoint.method} {call.endpoint.public_path}"
    if kinds and kinds <= {"429", "quota"}:
        headers.setdefault("Retry-After", "1")
        return ApiError(429, f"Every controller for {what} is rate limited upstream ({summary}).",
                        code="rate_limit_exceeded", headers=headers)
    if kinds == {"timeout"}:
        return ApiError(504, f"The upstream did not answer in time ({summary}).", code="upstream_timeout",
                        headers=headers)
    if kinds == {"protocol"}:
        return ApiError(502, f"The upstream sent an invalid response ({summary}).", code="bad_upstream_response",
                        headers=headers)
    return ApiError(500, f"No controller could answer the request ({summary}).", code="upstream_unavailable",
                    headers=headers)


def _tried_all(gateway: Gateway, label: str, candidates: Sequence[Controller], failures: list[Failure]) -> bool:
    """Every candidate was tried, or cannot be (ejected or disabled): a retry would not help."""
    tried = {failure.controller for failure in failures}
    store = gateway.store
    return all(c.name in tried or store.health(c, label).status in UNAVAILABLE for c in candidates)


def _earliest_return(gateway: Gateway, label: str, candidates: Sequence[Controller],
                     failures: list[Failure]) -> Optional[float]:
    """Seconds until a candidate that is cooling down or ejected may serve again, if one is."""
    waits = [f.retry_after for f in failures if f.retry_after is not None]
    store = gateway.store
    for controller in candidates:
        health = store.health(controller, label)
        if health.status in ("cooling", "ejected") and math.isfinite(health.wait):
            waits.append(health.wait)
    return min(waits) if waits else None


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream headers worth passing on: none that are hop-by-hop, cookies or rate-limit internals."""
    keep = {}
    for name in RELAYED_HEADERS:
        value = headers.get(name)
        if value is not None:
            keep[name] = value
    return keep
