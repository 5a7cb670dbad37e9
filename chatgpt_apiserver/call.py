"""A client's call on its way through the gateway: the original bytes plus what routing needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .endpoints.base import Endpoint
from .endpoints.catalog import CHAT


@dataclass
class Call:
    """One client request on its way upstream: the original bytes plus what routing needs."""

    body: bytes
    payload: dict[str, Any]  # the JSON body, or a form's text fields (first value of each); {} for none
    model: str  # the public model name; "" when the endpoint is routed by an id instead
    stream: bool
    request_id: str
    # The client did not ask for the final usage event; the gateway asks upstream and strips it.
    inject_usage: bool = False
    endpoint: Endpoint = CHAT
    path: str = ""  # the upstream path with its ids and the client's query ("" : the endpoint's own path)
    content_type: str = "application/json"  # a form's, with its boundary
    owner_of: Optional[str] = None  # a resp_/conv_ id: only the controller that holds it can answer
    attempted: bool = False  # an attempt began: the upstream may have it (and bill it)
    tried: str = ""  # the controller of the latest attempt
    # The scope of breakers and counts: the model, or the route when the call names none (Endpoint.label).
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = self.endpoint.label(self.model)

    @property
    def upstream_path(self) -> str:
        """Where the call goes, relative to a controller's base URL."""
        return self.path or self.endpoint.path
