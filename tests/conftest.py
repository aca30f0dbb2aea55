"""Session fixtures: Azurite and the Partner Center emulator, started by the test run itself (loopback only)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tools import devenv
from tools.coldstart import EXPORTER_OFFLINE
from tools.pc_emulator.models import DEFAULT_KNOBS

# Any Azure Monitor exporter a test builds stays on loopback, and none authenticates with a managed identity (which
# would ask the instance metadata address for a token): set for the whole run, before any test imports the exporter.
os.environ.update(EXPORTER_OFFLINE)
os.environ.pop("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", None)

# Hypothesis's too_slow health check off for the whole run: `make test` runs the unit tests beside integration tests
# that start hosts, Azurite and the emulator on two cores, where one 3-second stall of a small strategy's draw failed
# that health check on a fresh clone. A property's examples and assertions are unchanged; speed belongs in a
# benchmark, not in a unit test's pass or fail. A test's own @settings(suppress_health_check=...) replaces this
# list rather than adding to it, so such a test names too_slow again.
settings.register_profile("suite", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def azurite(run_dir):
    child, port = devenv.start_azurite(run_dir)
    yield devenv.azurite_connection_string(port)
    child.stop()


@pytest.fixture(scope="session")
def emulator(run_dir):
    emu = devenv.start_emulator(run_dir)
    yield emu
    assert emu.child is not None  # start_emulator always gives its child
    emu.child.stop()


@pytest.fixture
def pc(emulator):
    """The emulator with default knobs and no faults for this test."""
    emulator.knobs(**DEFAULT_KNOBS)
    emulator.faults([])
    yield emulator
    emulator.faults([])


@pytest.fixture
def queues(azurite):
    return devenv.Queues(azurite)


def new_customer(orders=(), **extra) -> dict:
    """A customer with a fresh id; ``orders`` are dicts of emulator order knobs (ids made up here)."""
    cid = str(uuid.uuid4())
    made = [{"id": uuid.uuid4().hex + "A", **knobs} for knobs in orders]  # 33 URL-safe characters
    return {"id": cid, "orders": made, **extra}


@pytest.fixture
def make_customer(pc):
    def make(orders=(), **extra):
        customer = new_customer(orders, **extra)
        pc.add_customers([customer])
        return customer

    return make


# Tests with upper time bounds or host kills carry ``xdist_group("timing")``: under ``--dist loadgroup`` they run one
# after another on one worker, so that no two of them compete, while the other workers run everything else.


def expected_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs["seconds"]) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath) or "/functions/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # In parallel runs (pytest-xdist workers, which all sort alike), the longest first and the rest in their usual
    # order: each worker takes one of them at the start instead of finding two behind each other at the end. A serial
    # run keeps pytest's order, so each module's fixtures start once.
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: -expected_seconds(item))
