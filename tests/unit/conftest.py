"""Unit tests use no network: any connect, bind or send of an internet socket in this process, or a name lookup of
anything but the loopback, fails the test at once.

``make check`` runs these tests alone and promises no sockets (no Azurite, no emulator, no Node). A test that needs a
server belongs in ``tests/functions`` or ``tests/integration``. Local sockets (``AF_UNIX``, which pipes and event loops
use) are allowed. The guard is on while each test runs (imports and collection are not watched), and child
processes a test starts are not watched (``test_coldstart.py`` keeps its own offline).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_INTERNET = (socket.AF_INET, socket.AF_INET6)
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class NetworkUsedError(AssertionError):
    """A unit test tried to use the network."""


def _guarded(name: str, original: Any) -> Any:
    def guard(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if self.family in _INTERNET:
            raise NetworkUsedError(f"a unit test called socket.{name}{args!r}: unit tests use no network")
        return original(self, *args, **kwargs)

    return guard


def _is_local(host: Any) -> bool:
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    if text.lower() in _LOOPBACK_NAMES:
        return True
    try:
        ipaddress.ip_address(text.split("%", 1)[0])  # a literal address: no lookup happens
    except ValueError:
        return False
    return True


def _guarded_lookup(original: Any) -> Any:
    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host):
            raise NetworkUsedError(f"a unit test looked up {host!r}: unit tests use no network")
        return original(host, *args, **kwargs)

    return getaddrinfo


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        monkeypatch.setattr(socket.socket, name, _guarded(name, getattr(socket.socket, name)))
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_lookup(socket.getaddrinfo))
    yield
