"""Controllers: one upstream each, built from validated specs."""

from __future__ import annotations

from ..call import Call
from ..config.controllers import ControllerSpec
from ..transport.reply import Reply, UpstreamError
from .base import Controller, Verdict
from .mock import MockController
from .openai import Transport, UpstreamController

__all__ = ["Call", "Controller", "ControllerSpec", "Reply", "Transport", "UpstreamError", "Verdict",
           "build_controller"]


def build_controller(spec: ControllerSpec, transport: Transport) -> Controller:
    """The controller for one spec; the spec's type was checked when the config was validated."""
    if spec.type == "mock":
        return MockController(spec)
    return UpstreamController(spec, transport)
