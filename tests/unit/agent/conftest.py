"""Shared fixtures for the agent's tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agent.logformat import _AgentHandler


@pytest.fixture(autouse=True)
def _drop_agent_log_handlers() -> Iterator[None]:
    """The CLI installs a stderr handler on the root logger; never let it outlive a test."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _AgentHandler):
            root.removeHandler(handler)
