"""tools/pythons.py: which Python versions the Makefile accepts, and which one is the other end of the range."""

import sys

import pytest

from tools import pythons


@pytest.mark.parametrize(
    "version, accepted, says",
    [
        ((3, 11), True, ""),
        ((3, 12), True, ""),
        ((3, 13), True, ""),
        ((3, 14), True, "warning: Python 3.14 is newer than this project has been tested on (3.11, 3.12 or 3.13)"),
        ((3, 10), False, "Python 3.10 is not supported (Azure Functions ended support for 3.10 in October 2026)"),
        ((3, 9), False, "Python 3.9 is not supported. This project needs Python 3.11, 3.12 or 3.13"),
    ],
)
def test_verdict(version, accepted, says):
    ok, message = pythons.verdict(version)
    assert ok is accepted
    assert message.startswith(says) if says else message == ""


@pytest.mark.parametrize(
    "here, other", [((3, 11), (3, 13)), ((3, 12), (3, 13)), ((3, 13), (3, 11)), ((3, 14), (3, 11))]
)
def test_other_end(here, other):
    assert pythons.other_end(here) == other


def test_find_returns_a_working_interpreter_of_that_version_only():
    here = sys.version_info[:2]
    assert pythons._version_of(sys.executable) == here
    found = pythons.find(here)  # None on a machine with no python3.X on PATH and no pyenv
    assert found is None or pythons._version_of(found) == here
    assert pythons.find((2, 1)) is None


@pytest.mark.parametrize(
    "found, expected",
    [
        ({(3, 11): "/p/3.11", (3, 12): "/p/3.12", (3, 13): "/p/3.13"}, "/p/3.13"),
        ({(3, 11): "/p/3.11", (3, 12): "/p/3.12", (3, 13): None}, "/p/3.12"),
        ({(3, 11): "/p/3.11", (3, 12): None, (3, 13): None}, "/p/3.11"),
        ({(3, 11): None, (3, 12): None, (3, 13): None}, sys.executable),
    ],
)
def test_preferred_is_the_newest_supported_python_found(found, expected):
    assert pythons.preferred(found) == expected


def test_preferred_on_this_machine_runs_a_supported_version():
    version = pythons._version_of(pythons.preferred())
    assert version is not None and pythons.verdict(version)[0]
