"""Fixtures for the reliability suite: a fault-injecting proxy in front of the moto server, and a
way to read the handler's structured log lines."""

from __future__ import annotations

import io
import json

import pytest

from tests.reliability.faultproxy import FaultProxy


@pytest.fixture
def proxy(moto_server):
    running = FaultProxy(upstream=moto_server).start()
    yield running
    running.stop()


@pytest.fixture
def handler_logs(handler):
    """The handler's JSON log lines written during the test (a list, filled as they come)."""
    stream = io.StringIO()
    previous = handler.logger.registered_handler.setStream(stream)

    class Lines(list):
        def refresh(self) -> Lines:
            self[:] = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
            return self

    yield Lines()
    handler.logger.registered_handler.setStream(previous)
