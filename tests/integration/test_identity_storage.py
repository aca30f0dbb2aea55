"""Identity-based storage, exercised: no connection string anywhere, tokens from the emulator's Entra endpoint.

Azurite runs over HTTPS (a certificate from the emulator's CA) with ``--oauth basic``; the host, the app and this
test's own producer each use a real ``ClientSecretCredential`` of the emulator's storage identity, with the host's
local-development settings ``AzureWebJobsStorage__queueServiceUri/__tenantId/__clientId/__clientSecret`` and
``AZURE_AUTHORITY_HOST``. What Azurite's basic OAuth checks, and what it does not (the signature), is asserted here
too, so the limits stated in docs/local-development.md are tested facts.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests

from tests.integration.conftest import FAST_HOST, World
from tools import devenv

API_VERSION = {"x-ms-version": "2025-11-05"}
WRONG_SECRET = "not-the-storage-identity-secret"


@pytest.fixture(scope="module")
def oauth_services(emulator, tmp_path_factory):
    """Azurite's queue and table services over HTTPS in OAuth mode: (queue service URI, table service URI)."""
    tls = emulator.storage_tls
    child, ports = devenv.start_azurite(
        tmp_path_factory.mktemp("oauth-azurite"), oauth=True, cert=tls["cert"], key=tls["key"], name="azurite-oauth"
    )
    yield devenv.azurite_queue_service_uri(ports.queue), devenv.azurite_table_service_uri(ports.table)
    child.stop()


@pytest.fixture(scope="module")
def oauth_azurite(oauth_services):
    """The queue service URI (``AzureWebJobsStorage__queueServiceUri``)."""
    return oauth_services[0]


@pytest.fixture(scope="module")
def oauth_tables(oauth_services):
    """The table service URI (``AzureWebJobsStorage__tableServiceUri``)."""
    return oauth_services[1]


@pytest.fixture
def id_queues(oauth_azurite, pc):
    """The test's own producer and reader: a token credential too, never the account key."""
    return devenv.Queues(account_url=oauth_azurite, credential=pc.storage_credential(), ca=pc.ca)


def identity_settings(pc, uri, table_uri, **extra):
    settings = {
        **devenv.unique_queues("i"),
        **pc.app_settings(),
        **pc.storage_identity_settings(uri, table_uri),
        "POLL_INTERVAL_SECONDS": "1",
        "POLL_MAX_INTERVAL_SECONDS": "2",
        "POLL_TIMEOUT_SECONDS": "60",
        "PARTNER_CENTER_RETRY_BUDGET_SECONDS": "3",
        "INVOCATION_WORK_SECONDS": "4",
        "PARTNER_CENTER_TIMEOUT_SECONDS": "3",
        **FAST_HOST,
        "AzureWebJobs.sweep_customers.Disabled": "true",
        **extra,
    }
    assert "AzureWebJobsStorage" not in settings and not any("AccountKey" in v for v in settings.values())
    return settings


@pytest.fixture
def id_world(oauth_azurite, oauth_tables, pc, id_queues, tmp_path):
    w = World(identity_settings(pc, oauth_azurite, oauth_tables), id_queues, pc, tmp_path)
    yield w
    for host in w.hosts:
        host.stop()


def b64url(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def forged(claims: dict) -> str:
    """A JWT nobody signed (the signature is random bytes)."""
    return (
        f"{b64url({'typ': 'JWT', 'alg': 'RS256', 'kid': 'nobody'})}.{b64url(claims)}.{b64url(uuid.uuid4().bytes * 8)}"
    )


def list_queues(uri: str, ca: str, token: str | None) -> requests.Response:
    headers = dict(API_VERSION, **({"Authorization": f"Bearer {token}"} if token is not None else {}))
    return requests.get(uri, params={"comp": "list"}, headers=headers, verify=ca, timeout=10)


# -- end to end, no connection string ----------------------------------------------------------------------------------


def test_deletion_end_to_end_with_tokens_only(id_world, make_customer):
    customer = make_customer()
    since = len(id_world.pc.requests_log())
    host = id_world.start()
    correlation = str(uuid.uuid4())
    id_world.request({"customerTenantId": customer["id"], "correlationId": correlation})
    (event,) = id_world.outcomes(1)
    assert (
        event["outcome"] == "deleted"
        and event["correlationId"] == correlation
        and event["customerTenantId"] == customer["id"]
    )
    assert customer["id"] not in id_world.pc.state()["customers"]
    log = host.log()
    # The host read the identity-based connection (its one line about it; never the secret) ...
    storage_id = id_world.pc.storage_identity
    assert (
        "Storage connection 'AzureWebJobsStorage': identity-based, "
        f"{id_world.settings['AzureWebJobsStorage__queueServiceUri']}, "
        f"client secret of app {storage_id['clientId']}" in log
    )
    assert storage_id["clientSecret"] not in log
    # ... and the emulator issued the tokens: the host's and the app's (separate processes, separate token caches).
    token_calls = [
        r for r in id_world.pc.requests_log(since) if r["path"].endswith("/oauth2/v2.0/token") and r["status"] == 200
    ]
    assert len(token_calls) >= 3  # the host's storage token, the app's storage token, the app's Partner Center token


def test_the_apps_own_composition_root_with_a_token(oauth_azurite, oauth_tables, pc, id_queues, monkeypatch):
    """shared.app._build, in this process, with identity settings only: its publisher sends with a storage token, and
    its table store writes and reads the sweep's record with one."""
    from shared import app
    from shared.config import reset_settings
    from shared.sweep import FIRST_SEEN_PARTITION

    settings = identity_settings(pc, oauth_azurite, oauth_tables, DELETION_REQUESTS_TABLE=f"id{uuid.uuid4().hex[:12]}")
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    reset_settings()
    try:
        deps = app._build()
        assert deps.settings.storage.uses_client_secret and "<redacted>" in repr(deps.settings.storage)
        queue = settings["DELETION_OUTCOMES_QUEUE"]
        deps.publisher.send(queue, b'{"probe": 1}')  # creates the queue, then sends: two authorised calls
        assert [m.content for m in id_queues.drain(queue)] == [base64.b64encode(b'{"probe": 1}').decode()]
        assert deps.tables is not None and deps.tables.name == settings["DELETION_REQUESTS_TABLE"]
        row = {
            "PartitionKey": FIRST_SEEN_PARTITION,
            "RowKey": str(uuid.uuid4()),
            "firstSeen": "2026-12-01T03:00:00.000Z",
        }
        deps.tables.insert(row)  # creates the table, then inserts: authorised calls with a storage token
        (stored,) = deps.tables.query_partition(FIRST_SEEN_PARTITION)
        assert {k: stored[k] for k in row} == row and stored["etag"]
    finally:
        reset_settings()


def test_the_queues_cli_redrives_and_reads_with_a_token(oauth_azurite, oauth_tables, pc, id_queues, tmp_path, capsys):
    """tools.queues with identity settings only (as an account without shared keys needs): it redrives the poison
    queue, unchanged, and shows a queue and the ledger, each call with a storage token from the emulator."""
    from tools import queues

    settings = identity_settings(pc, oauth_azurite, oauth_tables, DELETION_REQUESTS_TABLE=f"id{uuid.uuid4().hex[:12]}")
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": settings}))
    requests_q, poison = settings["DELETE_CUSTOMER_QUEUE"], settings["DELETE_CUSTOMER_QUEUE"] + "-poison"
    bodies = [json.dumps({"customerTenantId": str(uuid.uuid4()), "dryRun": True}) for _ in range(3)]
    id_queues.ensure(poison)
    for body in bodies:
        id_queues.send(poison, body)
    stored = sorted(id_queues.peek_raw(poison))

    assert queues.main(["--settings", str(path), "redrive"]) == 0
    assert f"moved 3 message(s) from {poison} to {requests_q}" in capsys.readouterr().out
    assert id_queues.peek_raw(poison) == []
    assert sorted(id_queues.peek_raw(requests_q)) == stored  # the stored text, unchanged

    assert queues.main(["--settings", str(path), "show", "requests"]) == 0
    out = capsys.readouterr().out
    assert f"3 message(s) on {requests_q}" in out and all(json.loads(b)["customerTenantId"] in out for b in bodies)
    assert queues.main(["--settings", str(path), "request", str(uuid.uuid4())]) == 1  # no rows: a table read
    assert "0 request(s) with correlation id" in capsys.readouterr().out


# -- Azurite really checks tokens (and what it does not check) ---------------------------------------------------------


def test_azurite_refuses_requests_without_a_valid_storage_token(oauth_azurite, pc):
    good = pc.storage_credential().get_token("https://storage.azure.com/.default").token
    assert list_queues(oauth_azurite, pc.ca, good).status_code == 200
    claims = claims_of(good)
    assert (
        claims["aud"] == "https://storage.azure.com"
        and claims["iss"] == f"https://sts.windows.net/{pc.partner['tenantId']}/"
    )
    assert claims["appid"] == pc.storage_identity["clientId"] and claims["tid"] == pc.partner["tenantId"]

    partner = pc.partner
    pc_token = requests.post(
        f"{pc.url}/{partner['tenantId']}/oauth2/v2.0/token",
        verify=pc.ca,
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_id": partner["clientId"],
            "client_secret": partner["clientSecret"],
            "scope": "https://api.partnercenter.microsoft.com/.default",
        },
    ).json()["access_token"]
    now = int(time.time())
    refused = {
        "no token": None,
        "a Partner Center token (opaque)": pc_token,
        "not a JWT": "garbage",
        "another issuer": forged({**claims, "iss": "https://login.example.com/tenant/"}),
        "another audience": forged({**claims, "aud": "https://api.partnercenter.microsoft.com"}),
        "expired": forged({**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
        "not yet valid": forged({**claims, "nbf": now + 3600, "exp": now + 7200}),
    }
    for what, token in refused.items():
        resp = list_queues(oauth_azurite, pc.ca, token)
        assert resp.status_code in (401, 403), f"{what}: {resp.status_code} {resp.text[:200]}"
    # The storage token is no Partner Center token either.
    assert (
        requests.get(
            f"{pc.url}/v1/customers",
            params={"size": 1},
            headers={"Authorization": f"Bearer {good}"},
            verify=pc.ca,
            timeout=10,
        ).status_code
        == 401
    )
    # The limit of "basic": a token with the right claims that nobody signed is accepted. The signature is not checked.
    assert list_queues(oauth_azurite, pc.ca, forged(claims)).status_code == 200


def test_the_emulators_storage_token_is_a_verifiable_rs256_jwt(pc):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    token = pc.storage_credential().get_token("https://storage.azure.com/.default").token
    head_b64, body_b64, sig_b64 = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head_b64 + "=" * (-len(head_b64) % 4)))
    conf = requests.get(
        f"{pc.url}/{pc.partner['tenantId']}/v2.0/.well-known/openid-configuration", verify=pc.ca, timeout=10
    ).json()
    (key,) = [
        k for k in requests.get(conf["jwks_uri"], verify=pc.ca, timeout=10).json()["keys"] if k["kid"] == header["kid"]
    ]
    n, e = (int.from_bytes(base64.urlsafe_b64decode(key[x] + "=" * (-len(key[x]) % 4)), "big") for x in ("n", "e"))
    rsa.RSAPublicNumbers(e, n).public_key().verify(
        base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4)),
        f"{head_b64}.{body_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    # The storage identity gets storage tokens only.
    resp = requests.post(
        f"{pc.url}/{pc.partner['tenantId']}/oauth2/v2.0/token",
        verify=pc.ca,
        timeout=10,
        data={
            "grant_type": "client_credentials",
            "client_id": pc.storage_identity["clientId"],
            "client_secret": pc.storage_identity["clientSecret"],
            "scope": "https://api.partnercenter.microsoft.com/.default",
        },
    )
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_scope"


# -- a wrong client secret fails clearly -------------------------------------------------------------------------------


def test_wrong_client_secret_fails_clearly_in_the_app(oauth_azurite, oauth_tables, pc, monkeypatch):
    from azure.core.exceptions import ClientAuthenticationError

    from shared import app
    from shared.config import reset_settings

    settings = identity_settings(pc, oauth_azurite, oauth_tables, AzureWebJobsStorage__clientSecret=WRONG_SECRET)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    reset_settings()
    try:
        deps = app._build()  # builds: nothing asks for a token before the first call
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215: Invalid client secret provided"):
            deps.publisher.send(settings["DELETION_OUTCOMES_QUEUE"], b"{}")
    finally:
        reset_settings()


@pytest.mark.slow(seconds=18)
def test_wrong_client_secret_fails_clearly_in_the_host(
    oauth_azurite, oauth_tables, pc, id_queues, tmp_path, make_customer
):
    w = World(
        identity_settings(pc, oauth_azurite, oauth_tables, AzureWebJobsStorage__clientSecret=WRONG_SECRET),
        id_queues,
        pc,
        tmp_path,
    )
    try:
        host = w.start()
        customer = make_customer()
        w.request({"customerTenantId": customer["id"], "correlationId": str(uuid.uuid4())})
        line = devenv.wait_for(
            lambda: next((ln for ln in host.log().splitlines() if "ERROR" in ln and "no token" in ln), None),
            30,
            what="the host to report the refused token",
        )
        assert (
            "Storage connection 'AzureWebJobsStorage'" in line
            and "AADSTS7000215: Invalid client secret provided" in line
        )
        assert WRONG_SECRET not in host.log()
        time.sleep(2)  # it keeps trying (as the host does); nothing runs, the request waits on its queue
        assert host.proc.poll() is None and "Executing 'Functions." not in host.log()
        assert id_queues.count(w.request_queue) == 1
        assert customer["id"] in pc.state()["customers"]
    finally:
        for h in w.hosts:
            h.stop()
