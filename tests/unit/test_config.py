"""Settings validation and credential selection (which credential, never its token)."""

import json

import pytest
from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from shared.auth import partner_center_credential, storage_credential
from shared.config import ConfigurationError, Settings

CONN = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)
TENANT, CLIENT = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"


def settings(tmp_path, **env):
    base = {"AzureWebJobsStorage": CONN}
    base.update(env)
    return Settings.from_env({k: v for k, v in base.items() if v is not None}, app_root=tmp_path)


def test_defaults(tmp_path):
    s = settings(tmp_path)
    assert (s.delete_queue, s.poll_queue, s.outcomes_queue) == (
        "customer-deletions",
        "customer-deletion-polls",
        "customer-deletion-outcomes",
    )
    assert s.delete_poison_queue == "customer-deletions-poison"
    assert s.base_url == "https://api.partnercenter.microsoft.com"
    assert s.scope == "https://api.partnercenter.microsoft.com/.default"
    assert (s.poll_interval, s.poll_max_interval, s.poll_timeout) == (30, 600, 21600)
    assert s.protected_ids == frozenset()
    assert (s.retry_budget, s.work_seconds, s.read_timeout, s.notes) == (4, 10, 30, ())
    assert "a2V5" not in repr(s) and "a2V5" not in repr(s.storage)


def test_every_problem_is_named_at_once(tmp_path):
    with pytest.raises(ConfigurationError) as info:
        settings(
            tmp_path,
            AzureWebJobsStorage=None,
            POLL_INTERVAL_SECONDS="soon",
            PARTNER_CENTER_BASE_URL="http://pc.example.com",
            PROTECTED_CUSTOMER_IDS="not-a-guid",
            DELETE_CUSTOMER_QUEUE="Bad_Queue",
            PARTNER_CENTER_CLIENT_ID="x",
        )
    text = str(info.value)
    for name in (
        "AzureWebJobsStorage",
        "POLL_INTERVAL_SECONDS",
        "PARTNER_CENTER_BASE_URL",
        "PROTECTED_CUSTOMER_IDS",
        "DELETE_CUSTOMER_QUEUE",
        "PARTNER_CENTER_TENANT_ID",
        "PARTNER_CENTER_CLIENT_SECRET",
    ):
        assert name in text
    assert len(info.value.problems) >= 7


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://api.partnercenter.microsoft.com", True),
        ("http://127.0.0.1:8443", True),
        ("http://localhost:8443", True),
        ("http://[::1]:8443", True),
        ("http://api.partnercenter.microsoft.com", False),
        ("http://10.0.0.5", False),
        ("ftp://127.0.0.1", False),
        ("https://user:pw@api.partnercenter.microsoft.com", False),
        ("https://api.partnercenter.microsoft.com?x=1", False),
    ],
)
def test_base_url_https_except_loopback(tmp_path, url, ok):
    if ok:
        assert settings(tmp_path, PARTNER_CENTER_BASE_URL=url).base_url == url.rstrip("/")
    else:
        with pytest.raises(ConfigurationError, match="PARTNER_CENTER_BASE_URL"):
            settings(tmp_path, PARTNER_CENTER_BASE_URL=url)


def test_queue_names_are_lower_cased_and_checked(tmp_path):
    assert settings(tmp_path, DELETE_CUSTOMER_QUEUE="My-Deletions").delete_queue == "my-deletions"
    for bad in ("ab", "a--b", "-ab", "a" * 57, "a_b"):
        with pytest.raises(ConfigurationError, match="DELETE_CUSTOMER_QUEUE"):
            settings(tmp_path, DELETE_CUSTOMER_QUEUE=bad)
    with pytest.raises(ConfigurationError, match="different"):
        settings(tmp_path, POLL_ORDERS_QUEUE="customer-deletions")


def test_protected_ids_normalised(tmp_path):
    s = settings(tmp_path, PROTECTED_CUSTOMER_IDS=f" {TENANT.upper()} ,, {CLIENT}")
    assert s.protected_ids == {TENANT, CLIENT}


def test_poll_bounds(tmp_path):
    with pytest.raises(ConfigurationError, match="POLL_MAX_INTERVAL_SECONDS must not be smaller"):
        settings(tmp_path, POLL_INTERVAL_SECONDS="60", POLL_MAX_INTERVAL_SECONDS="30")
    with pytest.raises(ConfigurationError, match="at most"):
        settings(tmp_path, POLL_MAX_INTERVAL_SECONDS=str(7 * 24 * 3600))


def test_max_polling_interval_from_host_json_and_override(tmp_path):
    assert settings(tmp_path).max_polling_interval == 60  # no host.json: the host's default, one minute
    (tmp_path / "host.json").write_text(
        json.dumps({"version": "2.0", "extensions": {"queues": {"MaxPollingInterval": "00:00:10"}}})
    )
    assert settings(tmp_path).max_polling_interval == 10
    assert (
        settings(
            tmp_path, AzureFunctionsJobHost__extensions__queues__maxPollingInterval="00:00:00.500"
        ).max_polling_interval
        == 0.5
    )
    with pytest.raises(ConfigurationError, match="maxPollingInterval"):
        settings(tmp_path, AzureFunctionsJobHost__extensions__queues__maxPollingInterval="2 seconds")


def test_a_retry_budget_of_the_previous_release_still_starts_at_the_new_maximum(tmp_path):
    s = settings(tmp_path, PARTNER_CENTER_RETRY_BUDGET_SECONDS="60")  # the previous release's default (per call)
    assert s.retry_budget == 30 and "used as 30" in s.notes[0]
    assert settings(tmp_path, PARTNER_CENTER_RETRY_BUDGET_SECONDS="0").retry_budget == 0
    with pytest.raises(ConfigurationError, match="PARTNER_CENTER_RETRY_BUDGET_SECONDS"):
        settings(tmp_path, PARTNER_CENTER_RETRY_BUDGET_SECONDS="3601")


def test_poll_timeout_has_an_upper_bound(tmp_path):
    assert settings(tmp_path, POLL_TIMEOUT_SECONDS=str(30 * 24 * 3600)).poll_timeout == 30 * 24 * 3600
    with pytest.raises(ConfigurationError, match="POLL_TIMEOUT_SECONDS"):
        settings(tmp_path, POLL_TIMEOUT_SECONDS="99999999999")


def test_the_delete_refusal_timeout_is_at_most_the_poll_timeout(tmp_path):
    assert settings(tmp_path).delete_refusal_timeout == 1800
    assert settings(tmp_path, DELETE_REFUSAL_TIMEOUT_SECONDS="60").delete_refusal_timeout == 60
    # Left at its default under a shorter POLL_TIMEOUT_SECONDS, it is the request's whole life, not a problem.
    assert settings(tmp_path, POLL_TIMEOUT_SECONDS="600").delete_refusal_timeout == 600
    with pytest.raises(ConfigurationError, match=r"DELETE_REFUSAL_TIMEOUT_SECONDS \(3600\) must not be larger"):
        settings(tmp_path, POLL_TIMEOUT_SECONDS="1800", DELETE_REFUSAL_TIMEOUT_SECONDS="3600")
    for bad in ("0", "soon", "-5"):
        with pytest.raises(ConfigurationError, match="DELETE_REFUSAL_TIMEOUT_SECONDS"):
            settings(tmp_path, DELETE_REFUSAL_TIMEOUT_SECONDS=bad)


def test_identity_based_storage(tmp_path):
    s = settings(
        tmp_path,
        AzureWebJobsStorage=None,
        AzureWebJobsStorage__queueServiceUri="https://acct.queue.core.windows.net/",
        AzureWebJobsStorage__tableServiceUri="https://acct.table.core.windows.net/",
        AzureWebJobsStorage__clientId=CLIENT,
    )
    assert s.storage.queue_service_uri == "https://acct.queue.core.windows.net" and s.storage.client_id == CLIENT
    assert s.storage.table_service_uri == "https://acct.table.core.windows.net"
    assert isinstance(storage_credential(s.storage), ManagedIdentityCredential)
    s = settings(tmp_path, AzureWebJobsStorage=None, AzureWebJobsStorage__accountName="acct")
    assert s.storage.queue_service_uri == "https://acct.queue.core.windows.net"
    assert s.storage.table_service_uri == "https://acct.table.core.windows.net"  # derived, as the host does
    assert isinstance(storage_credential(s.storage), DefaultAzureCredential)
    assert "table_service_uri='https://acct.table.core.windows.net'" in repr(s.storage)


@pytest.mark.parametrize(
    "env, problem",
    [
        (
            {"AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net"},
            "tableServiceUri is required",
        ),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net",
                "AzureWebJobsStorage__tableServiceUri": "http://acct.table.core.windows.net",
            },
            "tableServiceUri must be an https URL",
        ),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net",
                "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net?sig=x",
            },
            "without credentials or query",
        ),
        ({"AzureWebJobsStorage__accountName": "Acct/../x"}, "accountName must be a storage account name"),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "http://127.0.0.1:10001/devstoreaccount1",
                "AzureWebJobsStorage__tableServiceUri": "http://127.0.0.1:10002/devstoreaccount1",
                "AzureWebJobsStorage__tenantId": "11111111-2222-3333-4444-555555555555",
                "AzureWebJobsStorage__clientId": "11111111-2222-3333-4444-555555555556",
                "AzureWebJobsStorage__clientSecret": "s",
            },
            "tableServiceUri must be an https URL with a token credential",
        ),
    ],
)
def test_identity_based_storage_needs_a_table_endpoint_it_can_trust(tmp_path, env, problem):
    with pytest.raises(ConfigurationError) as err:
        settings(tmp_path, AzureWebJobsStorage=None, **env)
    assert problem in str(err.value)


@pytest.mark.parametrize("name", ["deletionrequests", "Ledger2", "abc", "a" * 63])
def test_the_requests_table_name(tmp_path, name):
    assert settings(tmp_path, DELETION_REQUESTS_TABLE=name).requests_table == name
    assert settings(tmp_path).requests_table == "deletionrequests"


@pytest.mark.parametrize("name", ["ab", "a" * 64, "1table", "dele-tion", "tables", "Tables", "x y", "d'x"])
def test_a_requests_table_name_azure_refuses_is_a_named_problem(tmp_path, name):
    with pytest.raises(ConfigurationError, match="DELETION_REQUESTS_TABLE must be a table name"):
        settings(tmp_path, DELETION_REQUESTS_TABLE=name)


URI = "https://acct.queue.core.windows.net"
TABLE_URI = "https://acct.table.core.windows.net"


def identity(tmp_path, **env):
    return settings(
        tmp_path,
        AzureWebJobsStorage=None,
        AzureWebJobsStorage__queueServiceUri=URI,
        AzureWebJobsStorage__tableServiceUri=TABLE_URI,
        **env,
    ).storage


def test_storage_credential_precedence(tmp_path):
    """The host's order: a connection string wins; credential=managedidentity; tenantId + clientId + clientSecret
    (local development); clientId alone (a user-assigned identity); else DefaultAzureCredential."""
    s = settings(
        tmp_path,
        AzureWebJobsStorage__queueServiceUri=URI,
        AzureWebJobsStorage__tenantId=TENANT,
        AzureWebJobsStorage__clientId=CLIENT,
        AzureWebJobsStorage__clientSecret="s3cret",
    )
    assert s.storage.connection_string == CONN and s.storage.queue_service_uri is None
    cred = storage_credential(
        identity(tmp_path, AzureWebJobsStorage__credential="managedidentity", AzureWebJobsStorage__clientId=CLIENT)
    )
    assert isinstance(cred, ManagedIdentityCredential)
    assert isinstance(
        storage_credential(identity(tmp_path, AzureWebJobsStorage__credential="ManagedIdentity")),
        ManagedIdentityCredential,
    )
    storage = identity(
        tmp_path,
        AzureWebJobsStorage__tenantId=TENANT,
        AzureWebJobsStorage__clientId=CLIENT,
        AzureWebJobsStorage__clientSecret="s3cret",
    )
    assert storage.uses_client_secret and storage.authority_host == "https://login.microsoftonline.com"
    cred = storage_credential(storage)
    assert isinstance(cred, ClientSecretCredential)
    assert cred._instance_discovery is None  # a known cloud keeps instance discovery
    assert isinstance(
        storage_credential(identity(tmp_path, AzureWebJobsStorage__clientId=CLIENT)), ManagedIdentityCredential
    )
    assert isinstance(storage_credential(identity(tmp_path)), DefaultAzureCredential)


def test_storage_client_secret_uses_azure_authority_host(tmp_path):
    storage = identity(
        tmp_path,
        AzureWebJobsStorage__tenantId=TENANT,
        AzureWebJobsStorage__clientId=CLIENT,
        AzureWebJobsStorage__clientSecret="s3cret",
        AZURE_AUTHORITY_HOST="https://127.0.0.1:9443/",
        PARTNER_CENTER_AUTHORITY_HOST="https://login.microsoftonline.com",
    )
    assert storage.authority_host == "https://127.0.0.1:9443"
    cred = storage_credential(storage)
    assert isinstance(cred, ClientSecretCredential)
    assert cred._instance_discovery is False  # an emulated authority must work with no internet
    assert "s3cret" not in repr(storage) and "<redacted>" in repr(storage)
    s = settings(
        tmp_path,
        AzureWebJobsStorage=None,
        AzureWebJobsStorage__queueServiceUri=URI,
        AzureWebJobsStorage__tableServiceUri=TABLE_URI,
        AzureWebJobsStorage__tenantId=TENANT,
        AzureWebJobsStorage__clientId=CLIENT,
        AzureWebJobsStorage__clientSecret="s3cret",
    )
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    "env, names",
    [
        ({"AzureWebJobsStorage__clientSecret": "s"}, ["__tenantId is required", "__clientId is required"]),
        (
            {"AzureWebJobsStorage__tenantId": TENANT, "AzureWebJobsStorage__clientId": CLIENT},
            ["__clientSecret is required"],
        ),
        (
            {
                "AzureWebJobsStorage__tenantId": "not a tenant",
                "AzureWebJobsStorage__clientId": CLIENT,
                "AzureWebJobsStorage__clientSecret": "s",
            },
            ["__tenantId must be"],
        ),
        (
            {
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__tenantId": TENANT,
                "AzureWebJobsStorage__clientId": CLIENT,
                "AzureWebJobsStorage__clientSecret": "s",
            },
            ["not with AzureWebJobsStorage__credential"],
        ),
        ({"AzureWebJobsStorage__credential": "clientsecret"}, ["__credential must be"]),
        (
            {
                "AzureWebJobsStorage__tenantId": TENANT,
                "AzureWebJobsStorage__clientId": CLIENT,
                "AzureWebJobsStorage__clientSecret": "s",
                "AZURE_AUTHORITY_HOST": "http://127.0.0.1:9443",
            },
            ["AZURE_AUTHORITY_HOST must use https"],
        ),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "http://127.0.0.1:10001/devstoreaccount1",
                "AzureWebJobsStorage__tenantId": TENANT,
                "AzureWebJobsStorage__clientId": CLIENT,
                "AzureWebJobsStorage__clientSecret": "s",
            },
            ["https URL with a token credential"],
        ),
    ],
)
def test_storage_identity_problems(tmp_path, env, names):
    with pytest.raises(ConfigurationError) as info:
        settings(tmp_path, AzureWebJobsStorage=None, **{"AzureWebJobsStorage__queueServiceUri": URI, **env})
    for name in names:
        assert name in str(info.value)
    assert "s3cret" not in str(info.value)


def test_credential_selection(tmp_path):
    assert isinstance(partner_center_credential(settings(tmp_path)), DefaultAzureCredential)
    cred = partner_center_credential(
        settings(
            tmp_path,
            PARTNER_CENTER_TENANT_ID=TENANT,
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_CLIENT_SECRET="s3cret",
        )
    )
    assert isinstance(cred, ClientSecretCredential)
    assert cred._instance_discovery is None  # a known cloud keeps instance discovery
    cred = partner_center_credential(
        settings(
            tmp_path,
            PARTNER_CENTER_TENANT_ID=TENANT,
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_CLIENT_SECRET="s3cret",
            PARTNER_CENTER_AUTHORITY_HOST="https://127.0.0.1:9443",
        )
    )
    assert cred._instance_discovery is False  # a private authority must work with no internet


def test_certificate_credential(tmp_path):
    import trustme

    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    pem = tmp_path / "app.pem"
    ca.issue_cert("app.example", key_type=trustme.KeyType.RSA).private_key_and_cert_chain_pem.write_to_path(str(pem))
    cred = partner_center_credential(
        settings(
            tmp_path,
            PARTNER_CENTER_TENANT_ID=TENANT,
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_CLIENT_CERTIFICATE_PATH=str(pem),
        )
    )
    assert isinstance(cred, CertificateCredential)
    with pytest.raises(ConfigurationError, match="not both"):
        settings(
            tmp_path,
            PARTNER_CENTER_TENANT_ID=TENANT,
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_CLIENT_SECRET="s",
            PARTNER_CENTER_CLIENT_CERTIFICATE_PATH=str(pem),
        )


def test_every_setting_token_of_every_function_json_is_in_the_example_settings():
    """The host resolves %SETTING% tokens before the app runs: a token missing where the app runs disables that
    function. The example settings are what a new user copies, so they must carry every one."""
    import re

    from shared.config import APP_ROOT

    example = json.loads((APP_ROOT / "local.settings.example.json").read_text())["Values"]
    tokens = {t for fj in APP_ROOT.glob("*/function.json") for t in re.findall(r"%([^%]+)%", fj.read_text())}
    assert {"DELETE_CUSTOMER_QUEUE", "POLL_ORDERS_QUEUE", "SWEEP_SCHEDULE"} <= tokens
    assert tokens <= set(example)
    assert example["SWEEP_SCHEDULE"] == "0 0 3 * * *"


def test_an_unresolved_key_vault_reference_is_named_and_never_shown(tmp_path):
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-abc.vault.azure.net/secrets/partner-center-client-secret/)"
    with pytest.raises(ConfigurationError, match="Key Vault reference the platform could not resolve") as info:
        settings(
            tmp_path,
            PARTNER_CENTER_TENANT_ID=TENANT,
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_CLIENT_SECRET=reference,
        )
    assert "kv-abc" not in str(info.value)
    # A resolved reference is the secret itself, which may contain anything.
    assert (
        settings(
            tmp_path,
            PARTNER_CENTER_TENANT_ID=TENANT,
            PARTNER_CENTER_CLIENT_ID=CLIENT,
            PARTNER_CENTER_CLIENT_SECRET="x@Microsoft.KeyVault(",
        ).client_secret
        == "x@Microsoft.KeyVault("
    )


@pytest.mark.parametrize(
    "conn",
    [
        "UseDevelopmentStorage=true",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        "AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:1/d;TableEndpoint=http://127.0.0.1:2/d",
        "BlobEndpoint=https://a.blob.core.windows.net;TableEndpoint=https://a.table.core.windows.net;SharedAccessSignature=sv=x",
    ],
)
def test_a_connection_string_names_or_implies_its_table_endpoint(tmp_path, conn):
    assert settings(tmp_path, AzureWebJobsStorage=conn).storage.connection_string == conn


@pytest.mark.parametrize(
    "conn, problem",
    [
        ("QueueEndpoint=https://a.queue.core.windows.net;SharedAccessSignature=sv=x", "no AccountName"),
        ("AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:1/d", "but no TableEndpoint"),
        (
            "AccountName=a;AccountKey=a2V5;TableEndpoint=http://a.table.core.windows.net",
            "TableEndpoint must be an https",
        ),
    ],
)
def test_a_connection_string_whose_table_endpoint_would_be_a_guess_is_a_setting_problem(tmp_path, conn, problem):
    with pytest.raises(ConfigurationError, match=problem):
        settings(tmp_path, AzureWebJobsStorage=conn)
    assert "a2V5" not in problem


def test_ledger_retention_days(tmp_path):
    assert settings(tmp_path).ledger_retention_days == 30
    assert settings(tmp_path, LEDGER_RETENTION_DAYS="365").ledger_retention_days == 365
    for bad in ("0", "3651", "a week"):
        with pytest.raises(ConfigurationError, match="LEDGER_RETENTION_DAYS"):
            settings(tmp_path, LEDGER_RETENTION_DAYS=bad)
