"""The status API end to end: deletion_status through the local host's HTTP trigger (route, function key, GET only),
reading the request ledger in Azurite's table service, while requests run through the ordinary functions."""

from __future__ import annotations

import uuid

import pytest

from tools import devenv


@pytest.fixture
def api(world):
    host = world.start()
    devenv.wait_for(lambda: host.admin_url(), 30, what="the host's HTTP port")
    base = f"{host.admin_url()}/api/deletions"
    return base, host.function_key("deletion_status"), host


def test_a_finished_request_is_shown_as_its_outcome_event_by_correlation_id_and_by_customer(world, api, make_customer):
    base, key, _ = api
    customer = make_customer()
    correlation = str(uuid.uuid4())
    world.request({"customerTenantId": customer["id"], "correlationId": correlation})
    (event,) = world.outcomes(1)
    assert event["outcome"] == "deleted"
    for url in (f"{base}/{correlation}", f"{base}/{correlation.upper()}", f"{base}?customerTenantId={customer['id']}"):
        resp = devenv.http_get(url, key=key)
        assert resp.status_code == 200, (url, resp.text)
        assert resp.headers["Content-Type"].startswith("application/json")
        (shown,) = resp.json()["requests"]
        assert {k: shown[k] for k in event} == event and shown["stage"] == "finished" and shown["nextStepAt"] is None
    # the key as the header works too, and wins over a wrong code
    assert devenv.http_get(f"{base}/{correlation}?code=wrong", key=key, header=True).status_code == 200


def test_a_running_request_shows_its_stage_and_next_step(world, api, make_customer):
    base, key, _ = api
    customer = make_customer([{"neverCancels": True}])
    correlation = str(uuid.uuid4())
    world.request({"customerTenantId": customer["id"], "correlationId": correlation})

    def running():  # the first hop's claim creates the row; its poll message gives the next step's time
        resp = devenv.http_get(f"{base}/{correlation}", key=key)
        shown = resp.json()["requests"][0] if resp.status_code == 200 else None
        return shown if shown and shown["nextStepAt"] else None

    shown = devenv.wait_for(running, 30, what="the request's row")
    assert shown["outcome"] is None and shown["stage"] in ("poll", "confirm", "discover") and shown["nextStepAt"]
    assert shown["correlationId"] == correlation and shown["customerTenantId"] == customer["id"]


def test_keys_methods_and_bad_input_are_answered_as_the_host_and_the_contract_say(api):
    base, key, _ = api
    some = str(uuid.uuid4())
    assert devenv.http_get(f"{base}/{some}").status_code == 401  # no key
    assert devenv.http_get(f"{base}/{some}", key="not-the-key").status_code == 401
    assert devenv.http_get(f"{base}/{some}", key=key, method="POST").status_code == 404  # methods: ["get"]
    assert devenv.http_get(f"{base}/{some}", key=key, method="HEAD").status_code == 404
    missing = devenv.http_get(f"{base}/{some}", key=key)
    assert missing.status_code == 404 and "no deletion request" in missing.json()["error"]
    for url, says in (
        (f"{base}/not-a-guid", "must be a GUID"),
        (f"{base}?customerTenantId=nope", "must be a GUID"),
        (f"{base}?customerTenantId={some}&customerTenantId={some}", "more than once"),
        (f"{base}?%3Cscript%3Ealert(1)%3C/script%3E=1", "unknown query parameter"),
        (f"{base}/{some}?customerTenantId={some}", "not both"),
        (base, "give a correlation id"),
    ):
        resp = devenv.http_get(url, key=key)
        assert resp.status_code == 400 and says in resp.json()["error"], (url, resp.text)
        assert "<" not in resp.text and ">" not in resp.text  # never the raw input back
    assert devenv.http_get(f"{base.rsplit('/', 1)[0]}/elsewhere", key=key).status_code == 404
