"""``tools.queues`` reaches storage as the app does, or an Azure account with the operator's own sign-in: which
endpoints and which credential it chooses (never a token; no client here opens a connection)."""

from __future__ import annotations

import json

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

from shared.config import ConfigurationError
from tools import queues

CONN = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)
TENANT, CLIENT = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"


def endpoints(values, account_name=None):
    q, t = queues.storage_clients(values, account_name)
    return q.service.url.rstrip("/"), t.url.rstrip("/"), q.service.credential, t.credential


def test_an_account_name_means_that_accounts_endpoints_and_the_operators_own_sign_in():
    # the settings' connection string is set aside: --account-name names the storage
    queue_url, table_url, qc, tc = endpoints({"AzureWebJobsStorage": CONN}, "stfuncabc123")
    assert (queue_url, table_url) == (
        "https://stfuncabc123.queue.core.windows.net",
        "https://stfuncabc123.table.core.windows.net",
    )
    assert isinstance(qc, DefaultAzureCredential) and tc is qc


@pytest.mark.parametrize("name", ["St-Func", "ab", "a" * 25, "evil.example.com/x", ""])
def test_an_account_name_that_is_not_one_is_refused(name):
    with pytest.raises(ConfigurationError, match="--account-name must be a storage account name"):
        queues.storage_clients({}, name)


def test_a_connection_string_uses_its_shared_key():
    queue_url, table_url, qc, tc = endpoints({"AzureWebJobsStorage": CONN})
    assert (queue_url, table_url) == (
        "http://127.0.0.1:10001/devstoreaccount1",
        "http://127.0.0.1:10002/devstoreaccount1",
    )
    assert qc.account_name == "devstoreaccount1" and isinstance(tc, AzureNamedKeyCredential)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, DefaultAzureCredential),
        ({"AzureWebJobsStorage__credential": "managedidentity"}, ManagedIdentityCredential),
        (
            {
                "AzureWebJobsStorage__tenantId": TENANT,
                "AzureWebJobsStorage__clientId": CLIENT,
                "AzureWebJobsStorage__clientSecret": "s",
            },
            ClientSecretCredential,
        ),
    ],
)
def test_identity_based_settings_choose_the_apps_credential(extra, expected):
    queue_url, table_url, qc, tc = endpoints({"AzureWebJobsStorage__accountName": "stfuncabc123", **extra})
    assert (queue_url, table_url) == (
        "https://stfuncabc123.queue.core.windows.net",
        "https://stfuncabc123.table.core.windows.net",
    )
    assert isinstance(qc, expected) and tc is qc


def test_no_storage_at_all_is_refused_with_the_settings_name(tmp_path, capsys, monkeypatch):
    for name in ("AzureWebJobsStorage", "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__queueServiceUri"):
        monkeypatch.delenv(name, raising=False)
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"AzureWebJobsStorage__clientSecret": "sekrit-42"}}))
    with pytest.raises(SystemExit) as exit_:
        queues.main(["--settings", str(settings), "show", "poison"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "AzureWebJobsStorage is required" in err and "sekrit-42" not in err  # never the secret


def test_a_malformed_account_name_on_the_command_line_exits_with_its_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        queues.main(["--settings", str(tmp_path / "none.json"), "--account-name", "Not_An_Account", "redrive"])
    assert exit_.value.code == 2
    assert "--account-name must be a storage account name (got 'Not_An_Account')" in capsys.readouterr().err
