"""Fixtures of the tests that start processes or listen on sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fakes.apiserver import FakeApiServer


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    """The fake kube-apiserver (fakes/apiserver.py) on a free port."""
    fake = FakeApiServer()
    await fake.start()
    yield fake
    await fake.stop()
