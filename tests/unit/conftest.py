"""Unit tests use no network: any connect or bind of an internet socket in this process fails the test at once.

``make check`` runs these tests alone and promises no sockets (no Azurite, no emulator, no Node). A test that needs a
server belongs in ``tests/functions`` or ``tests/integration``. Local sockets (``AF_UNIX``, which pipes and event loops
use) are allowed; child processes a test starts are not watched (``test_coldstart.py`` keeps its own offline).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

_INTERNET = (socket.AF_INET, socket.AF_INET6)


class NetworkUsedError(AssertionError):
    """A unit test tried to use the network."""


def _guarded(name: str, original: Any) -> Any:
    def guard(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if self.family in _INTERNET:
            raise NetworkUsedError(f"a unit test called socket.{name}{args!r}: unit tests use no network")
        return original(self, *args, **kwargs)

    return guard


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, _guarded(name, getattr(socket.socket, name)))
    yield
