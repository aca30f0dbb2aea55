"""Secrets never reach the logs: a full deletion (real azure-identity, real storage client, the emulator) is run with
every logger at DEBUG, and the captured output is searched for the token, the client secret and the account key."""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import types
import uuid
from typing import cast

import pytest

import delete_customer
import poll_orders
from shared import app
from shared.config import reset_settings
from shared.partner_center import PartnerCenterClient
from tests.functions import receive
from tools import devenv
from tools.local_host.host import decode_base64_strict


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # root and every library logger, azure-core's HTTP logging included
    names = (
        "azure",
        "azure.core.pipeline.policies.http_logging_policy",
        "azure.identity",
        "msal",
        "urllib3",
        "customer_deletion",
    )
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for name, level in levels.items():  # a later test in this process sees the levels as they were
        logging.getLogger(name).setLevel(level)


def test_full_run_logs_no_token_secret_or_key(monkeypatch, azurite, pc, queues, make_customer, debug_logs):
    names = devenv.unique_queues("s")
    for key, value in {
        "AzureWebJobsStorage": azurite,
        **names,
        **pc.app_settings(),
        "POLL_INTERVAL_SECONDS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    app.set_deps(None)
    try:
        customer = make_customer([{"cancelAfterReads": 1}])
        queues.ensure(names["DELETE_CUSTOMER_QUEUE"])
        queues.send(names["DELETE_CUSTOMER_QUEUE"], json.dumps({"customerTenantId": customer["id"]}))
        ctx = types.SimpleNamespace(invocation_id=str(uuid.uuid4()))
        for queue, main in (
            (names["DELETE_CUSTOMER_QUEUE"], delete_customer.main),
            (names["POLL_ORDERS_QUEUE"], poll_orders.main),
            (names["POLL_ORDERS_QUEUE"], poll_orders.main),
        ):
            msg, _ = devenv.wait_for(functools.partial(receive, queues, queue), 10, what=f"a message on {queue}")
            main(msg, ctx)  # type: ignore[arg-type]  # a SimpleNamespace stands in for the host's Context
            time.sleep(0.2)
        outcomes = [json.loads(decode_base64_strict(m.content)) for m in queues.drain(names["DELETION_OUTCOMES_QUEUE"])]
        assert [o["outcome"] for o in outcomes] == ["deleted"]

        # the cached token the calls used
        token = (
            cast(PartnerCenterClient, app.deps().partner_center)._credential.get_token(app.deps().settings.scope).token
        )
        secrets = {"token": token, "client secret": pc.partner["clientSecret"], "account key": devenv.AZURITE_KEY}
        text = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in debug_logs.records)
        assert "customer_deletion" in text and len(debug_logs.records) > 20  # the capture really saw the run
        for what, value in secrets.items():
            assert value not in text, f"the {what} appears in the logs"
        assert re.search(r"Bearer\s+[A-Za-z0-9._~+/=-]{8,}", text) is None  # no Authorization value of any kind
    finally:
        reset_settings()
        app.set_deps(None)
