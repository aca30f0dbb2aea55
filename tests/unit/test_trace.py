"""Every record of an invocation carries the host's trace (telemetry.invocation_trace); SDK noise stays out."""

from __future__ import annotations

import logging
import threading
import types

import pytest
from opentelemetry import trace

from shared import telemetry

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def ctx(parent: str | None, state: str = "") -> types.SimpleNamespace:
    return types.SimpleNamespace(trace_context=types.SimpleNamespace(trace_parent=parent, trace_state=state))


def current_trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def test_the_host_trace_is_current_inside_the_block_and_gone_after():
    before = current_trace_id()
    with telemetry.invocation_trace(ctx(PARENT, "k=v")):
        assert current_trace_id() == TRACE_ID
        assert trace.get_current_span().get_span_context().is_remote
    assert current_trace_id() == before


def test_it_holds_in_a_thread_pool_thread_that_did_not_inherit_the_context():
    """As on 3.13: the runtime attaches the trace on its loop, then runs the function in a thread without it."""
    seen: list[str] = []

    def work():
        assert current_trace_id() == "0" * 32
        with telemetry.invocation_trace(ctx(PARENT)):
            seen.append(current_trace_id())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [TRACE_ID]


@pytest.mark.parametrize(
    "parent",
    [None, "", "garbage", f"00-{'0' * 32}-b7ad6b7169203331-01", f"00-{TRACE_ID}-{'0' * 16}-01", PARENT.upper()],
)
def test_a_missing_or_malformed_traceparent_leaves_the_context_alone(parent):
    before = current_trace_id()
    with telemetry.invocation_trace(ctx(parent)):
        assert current_trace_id() == before
    with telemetry.invocation_trace(types.SimpleNamespace()):  # no trace_context at all (an old host, a test)
        assert current_trace_id() == before


def test_sdk_loggers_at_their_default_are_raised_to_warning_and_a_chosen_level_is_kept():
    child = "azure.core.pipeline.policies.http_logging_policy"
    names = {n: logging.getLogger(n).level for n in (*telemetry.SDK_LOGGERS, child)}
    try:
        for n in names:  # every one at its default, as in a fresh worker (another test may have set one)
            logging.getLogger(n).setLevel(logging.NOTSET)
        logging.getLogger("urllib3").setLevel(logging.DEBUG)  # someone debugging a call
        telemetry.quiet_sdk_loggers()
        assert logging.getLogger("azure").level == logging.WARNING
        assert not logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.INFO)
        assert not logging.getLogger("azure.monitor.opentelemetry.exporter.export._base").isEnabledFor(logging.INFO)
        assert logging.getLogger("azure.identity").isEnabledFor(logging.WARNING)
        assert logging.getLogger("urllib3").level == logging.DEBUG
    finally:
        for n, level in names.items():
            logging.getLogger(n).setLevel(level)
