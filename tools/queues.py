"""Send, show and redrive the app's queue messages (Base64, as the Functions host reads them).

    python -m tools.queues send '{"customerTenantId": "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b", "dryRun": true}'
    python -m tools.queues show outcomes          # requests | polls | outcomes | poison | polls-poison | reports
    python -m tools.queues redrive                # move every message of <DELETE_CUSTOMER_QUEUE>-poison back, unchanged
    python -m tools.queues show first-seen        # the sweep's record: when it first saw each customer (a table)
    python -m tools.queues request <correlation id>  # the request ledger's rows of that correlation id, as stored
    python -m tools.queues --account-name <account> redrive   # a storage account in Azure, with your own sign-in

Storage and queue names come from the settings file (``--settings``, default local.settings.json) or, when it is
missing, from the environment, with the app's defaults. Storage is read as the app reads it: ``AzureWebJobsStorage``
as a connection string, or identity-based with the host's ``AzureWebJobsStorage__...`` settings and the app's choice of
credential (``shared.auth.storage_credential``). ``--account-name`` replaces the settings' storage with that account's
endpoints and DefaultAzureCredential (``az login``, ``azd auth login``), for an account without shared keys, as
``azd up`` makes it. ``show`` peeks (up to 32 messages) and consumes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from shared.config import DEFAULTS
from shared.sweep import read_policy
from tools.devenv import Queues
from tools.local_host.host import decode_base64_strict

ROOT = Path(__file__).resolve().parent.parent


def load(settings_path: str) -> dict[str, str]:
    path = Path(settings_path)
    values = dict(os.environ)
    if path.exists():
        values.update(json.loads(path.read_text(encoding="utf-8-sig")).get("Values") or {})
    return values


def storage_clients(values: dict[str, str], account_name: str | None = None) -> tuple[Queues, Any]:
    """The app's queues (``tools.devenv.Queues``) and its table service, as ``values`` name them, or ``account_name``'s
    with DefaultAzureCredential. Raises ConfigurationError, naming the setting, when neither is usable."""
    from azure.data.tables import TableServiceClient
    from azure.identity import DefaultAzureCredential

    from shared.auth import storage_credential
    from shared.config import ConfigurationError, storage_connection

    if account_name is not None:
        if not re.fullmatch(r"[a-z0-9]{3,24}", account_name):
            raise ConfigurationError([f"--account-name must be a storage account name (got {account_name[:40]!r})"])
        credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return (
            Queues(account_url=f"https://{account_name}.queue.core.windows.net", credential=credential),
            TableServiceClient(f"https://{account_name}.table.core.windows.net", credential=credential),
        )
    storage = storage_connection(values)
    if storage.connection_string:
        return Queues(storage.connection_string), TableServiceClient.from_connection_string(storage.connection_string)
    assert storage.queue_service_uri and storage.table_service_uri  # storage_connection refuses one without them
    credential = storage_credential(storage)
    return (
        Queues(account_url=storage.queue_service_uri, credential=credential),
        TableServiceClient(storage.table_service_uri, credential=credential),
    )


def show_request(tables: Any, table: str, correlation_id: str) -> int:
    """Print the ledger's rows of one correlation id (a redrive shares it), newest first, as stored."""
    from shared.tables import TableStore

    rows = TableStore(tables, table).query_by("correlationId", correlation_id)
    for r in sorted(rows, key=lambda r: str(r.get("requestedAt")), reverse=True):
        shown = {k: v for k, v in r.items() if k != "event"}
        if isinstance(r.get("event"), str):
            with contextlib.suppress(ValueError):
                shown["event"] = json.loads(r["event"])
        print(json.dumps(shown, indent=2, default=str))
    print(f"{len(rows)} request(s) with correlation id {correlation_id} in {table}")
    return 0 if rows else 1


def show_first_seen(tables: Any, table: str) -> int:
    """Print the sweep's first-seen record, oldest first."""
    from shared.sweep import FIRST_SEEN_PARTITION
    from shared.tables import TableStore

    rows = TableStore(tables, table).query_partition(FIRST_SEEN_PARTITION)
    for r in sorted(rows, key=lambda r: (str(r.get("firstSeen")), str(r.get("RowKey")))):
        print(f"{r.get('RowKey')}  first seen {r.get('firstSeen')}")
    print(f"{len(rows)} customer(s) in the first-seen record ({table}, partition {FIRST_SEEN_PARTITION})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.queues", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=str(ROOT / "local.settings.json"))
    parser.add_argument(
        "--account-name",
        help="a storage account in Azure, reached with your own sign-in (DefaultAzureCredential) instead of the "
        "settings' storage; queue and table names still come from the settings",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="put a deletion request (text as given) on the request queue")
    send.add_argument("body")
    show = sub.add_parser("show", help="peek at a queue, decoded")
    show.add_argument(
        "which", choices=["requests", "polls", "outcomes", "poison", "polls-poison", "reports", "first-seen"]
    )
    sub.add_parser("redrive", help="move the request queue's poison messages back to the request queue, unchanged")
    row = sub.add_parser("request", help="show the request ledger's rows of a correlation id")
    row.add_argument("correlation_id")
    args = parser.parse_args(argv)

    from azure.core.exceptions import ResourceNotFoundError

    values = load(args.settings)
    if values.get("REQUESTS_CA_BUNDLE"):  # as the host gives the app its settings: the CA of a local TLS endpoint
        os.environ["REQUESTS_CA_BUNDLE"] = values["REQUESTS_CA_BUNDLE"]
    from shared.config import ConfigurationError

    try:
        queues, tables = storage_clients(values, args.account_name)
    except ConfigurationError as e:
        parser.error("; ".join(e.problems))
    names = {
        k: (values.get(k) or DEFAULTS[k]).lower()
        for k in ("DELETE_CUSTOMER_QUEUE", "POLL_ORDERS_QUEUE", "DELETION_OUTCOMES_QUEUE")
    }
    # The sweep's own rule (read_policy): a report queue name that is not valid, or is one of the app's queues, falls
    # back to the default; None when even that is taken (the reports are then only logged).
    reports = read_policy(values, app_queues=tuple(names.values())).reports_queue
    if reports is None and args.command == "show" and args.which == "reports":
        parser.error(
            "no queue can take the sweep's reports with these settings (see SWEEP_REPORTS_QUEUE): they are only logged"
        )
    queue_of = {
        "requests": names["DELETE_CUSTOMER_QUEUE"],
        "polls": names["POLL_ORDERS_QUEUE"],
        "outcomes": names["DELETION_OUTCOMES_QUEUE"],
        "poison": names["DELETE_CUSTOMER_QUEUE"] + "-poison",
        "polls-poison": names["POLL_ORDERS_QUEUE"] + "-poison",
    }
    if reports is not None:
        queue_of["reports"] = reports
    service = queues.service

    if args.command == "send":
        queues.ensure(queue_of["requests"])
        print(f"sent message {queues.send(queue_of['requests'], args.body)} to {queue_of['requests']}")
        return 0

    if args.command == "request":
        from shared.ids import is_guid

        if not is_guid(args.correlation_id):
            parser.error("the correlation id must be a GUID")
        return show_request(
            tables,
            values.get("DELETION_REQUESTS_TABLE") or DEFAULTS["DELETION_REQUESTS_TABLE"],
            args.correlation_id.lower(),
        )

    if args.command == "show" and args.which == "first-seen":
        return show_first_seen(tables, values.get("DELETION_REQUESTS_TABLE") or DEFAULTS["DELETION_REQUESTS_TABLE"])

    if args.command == "show":
        try:
            messages = list(service.get_queue_client(queue_of[args.which]).peek_messages(max_messages=32))
        except ResourceNotFoundError:
            messages = []
        for m in messages:
            try:
                text = decode_base64_strict(m.content).decode("utf-8")
            except ValueError:
                text = f"(not Base64) {m.content}"
            with contextlib.suppress(ValueError):
                text = json.dumps(json.loads(text), indent=2)
            print(f"--- {m.id} inserted {m.inserted_on:%Y-%m-%dT%H:%M:%SZ} dequeued {m.dequeue_count}x\n{text}")
        print(
            f"{len(messages)} message(s) on {queue_of[args.which]}"
            + (" (peek shows at most 32)" if len(messages) == 32 else "")
        )
        return 0

    # redrive: receive from poison, send the same text to the request queue, then delete from poison
    poison = service.get_queue_client(queue_of["poison"])
    target = service.get_queue_client(queue_of["requests"])
    moved = 0
    queues.ensure(queue_of["requests"])  # a missing request queue would fail the first send, not read as "moved 0"
    try:
        while True:
            page = list(
                next(
                    poison.receive_messages(max_messages=32, messages_per_page=32, visibility_timeout=60).by_page(), []
                )
            )
            if not page:
                break
            for m in page:
                target.send_message(m.content)  # the stored text unchanged: still Base64, still the original request
                poison.delete_message(m)
                moved += 1
    except ResourceNotFoundError:
        pass
    print(f"moved {moved} message(s) from {queue_of['poison']} to {queue_of['requests']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
