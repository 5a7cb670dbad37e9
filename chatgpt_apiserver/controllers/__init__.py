"""Controllers: one upstream each, built from validated specs."""

from __future__ import annotations

from collections.abc import Callable

from ..call import Call
from ..config.controllers import ControllerSpec
from ..transport.reply import Reply, UpstreamError
from .azure import AzureController
from .base import Controller, Verdict
from .mock import MockController
from .openai import Transport, UpstreamController

__all__ = ["Call", "Controller", "ControllerSpec", "Reply", "Transport", "UpstreamError", "Verdict",
           "build_controller"]


# The controller class of each type (config/controllers.py holds each type's settings schema).
TYPES: dict[str, Callable[[ControllerSpec, Transport], Controller]] = {
    "openai": UpstreamController,
    "azure": AzureController,
    "mock": lambda spec, _transport: MockController(spec),
}


def build_controller(spec: ControllerSpec, transport: Transport) -> Controller:
    """The controller for one spec; the spec's type was checked when the config was validated."""
    return TYPES[spec.type](spec, transport)
