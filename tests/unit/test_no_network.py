"""The unit tests' network guard (``tests/unit/conftest.py``): what ``make check`` promises, checked."""

from __future__ import annotations

import socket

import pytest
import requests

from tests.unit.conftest import NetworkUsedError


def test_connecting_or_listening_on_an_internet_socket_fails_the_test():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkUsedError, match="connect"):
        s.connect(("127.0.0.1", 9))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s, pytest.raises(NetworkUsedError, match="connect_ex"):
        s.connect_ex(("::1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkUsedError, match="bind"):
        s.bind(("127.0.0.1", 0))


def test_sending_a_datagram_or_looking_up_a_name_fails_the_test():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(NetworkUsedError, match="sendto"):
        s.sendto(b"x", ("127.0.0.1", 9))
    with pytest.raises(NetworkUsedError, match=r"looked up 'login\.microsoftonline\.com'"):
        socket.getaddrinfo("login.microsoftonline.com", 443)
    assert socket.getaddrinfo("127.0.0.1", 9)  # a literal address needs no lookup: allowed


def test_a_real_http_client_is_stopped_before_it_sends():
    with pytest.raises(NetworkUsedError):
        requests.get("http://127.0.0.1:9/", timeout=1)


def test_local_sockets_still_work():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"
