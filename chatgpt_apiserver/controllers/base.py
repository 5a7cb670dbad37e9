"""What every controller (one upstream each) offers the relay: send a call, get a reply."""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

from ..call import Call
from ..config.controllers import ControllerSpec
from ..endpoints.base import Endpoint
from ..ops.counters import ControllerStats
from ..transport.reply import Reply

log = logging.getLogger("chatgpt_apiserver.controllers")

# Statuses that say "this controller cannot answer now" (not "this request is wrong"): try another one.
CONTROLLER_FAULTS = frozenset((401, 403, 408, 429))


class Verdict(Enum):
    """What an upstream's error answer says about the controller that gave it."""

    ANSWER = "answer"  # the request's own answer (the client's mistake): relay it, nothing against the controller
    FAULT = "fault"  # the controller cannot answer now (429, a rejected key, 408, 5xx): count it, try another
    NO_MODEL = "no_model"  # the controller lacks the model (Azure's missing deployment): off for that model


class Controller(ABC):
    """One upstream (an API key plus a base URL, or the in-process mock)."""

    def __init__(self, spec: ControllerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.weight = spec.weight
        self.models = spec.models
        self.stats = ControllerStats(spec.models)
        self.fingerprint = fingerprint(spec)
        self.takes_stream_usage = spec.stream_usage  # false once the upstream refused stream_options
        self.key_renews = False  # its credential is renewed from outside (a token file), so a rejection may pass

    def serves(self, model: str) -> bool:
        """Whether this controller takes requests for `model`."""
        return self.models is None or model in self.models

    def supports(self, endpoint: Endpoint) -> bool:
        """Whether this controller's upstream serves `endpoint` at all."""
        return True

    def classify(self, status: int, body: bytes) -> Verdict:
        """What an error answer (`status` >= 400, with its `body`) says about this controller.

        The one place a status is judged; a type whose upstream says more in its bodies overrides it.
        """
        return Verdict.FAULT if status >= 500 or status in CONTROLLER_FAULTS else Verdict.ANSWER

    def refuse_stream_usage(self) -> None:
        """The upstream answered 400 to the stream_options the gateway adds: never add it again (until reload)."""
        if self.takes_stream_usage:
            self.takes_stream_usage = False
            log.warning("controller %s refuses stream_options (an upstream that checks for unknown arguments); "
                        "its streams are settled from the token estimate from now on", self.name)

    def upstream_model(self, model: str) -> str:
        """The name the upstream knows `model` by (aliases map public names)."""
        if self.models is None:
            return model
        return self.models.get(model, model)

    async def start(self) -> None:
        """Open pools and sessions; called once the event loop runs."""

    def configure_transport(self, transport: Any) -> None:
        """Apply new connection-level limits (a reload) without dropping open connections."""

    async def close(self) -> None:
        """Release pools and sessions."""

    @abstractmethod
    async def send(self, call: Call, body: bytes) -> Reply:
        """Send `body` (the call's, rewritten for this upstream) once headers are in. Raises `UpstreamError`."""

    @abstractmethod
    async def discover_models(self) -> list[str]:
        """The model names the upstream reports (a control-plane call, not on the hot path)."""

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for logs, --check-config and the admin view."""
        limits = self.spec.limits
        return {"name": self.name, "type": self.spec.type, "weight": self.weight,
                "models": dict(sorted(self.models.items())) if self.models is not None else None,
                "limits": {"rpm": limits.rpm, "tpm": limits.tpm, "max_concurrency": limits.max_concurrency}}


def fingerprint(spec: ControllerSpec) -> str:
    """A short digest of what identifies the upstream account: its type, address and credentials.

    Disables follow it (rules R5), so a rotated key is a fresh controller on every instance at once.
    It is a one-way digest, used only inside the state store's keys.
    """
    digest = hashlib.sha256(spec.type.encode())
    for key in ("base_url", "endpoint", "organization", "project"):
        digest.update(b"\0" + str(spec.settings.get(key, "")).encode())
    if spec.settings.get("bearer_token_file"):  # its token is renewed: the file names the credential
        digest.update(b"\0token-file=" + str(spec.settings["bearer_token_file"]).encode())
    if spec.api_key is not None:
        digest.update(b"\0" + spec.api_key.reveal().encode())
    for name, value in sorted((spec.settings.get("headers") or {}).items()):
        digest.update(b"\0" + name.lower().encode() + b"=" + value.reveal().encode())
    return digest.hexdigest()[:16]
