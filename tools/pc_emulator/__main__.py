"""Start the Partner Center sandbox emulator: HTTPS on loopback, with a certificate authority it generates.

    python -m tools.pc_emulator --seed tools/pc_emulator/sample_sandbox.json --port 8443 --state-dir .local/emulator

With ``--full-sandbox N`` it starts with the seed's customers plus N generated ones (``full_sandbox_customers``,
from ``--full-sandbox-seed``, default 7); they are part of the seed, so ``POST /_emulator/reset`` brings them back.

It writes ``<state-dir>/ca.pem`` (trust it with ``REQUESTS_CA_BUNDLE``) and ``<state-dir>/emulator.json`` (its URL,
the partner's app registration, the storage identity and the files below), and prints one line when it is ready.
Stop it with Ctrl-C or SIGTERM. It also writes ``<state-dir>/storage-cert.pem`` and ``storage-key.pem``: a loopback
certificate from the same CA, for Azurite over HTTPS (``--cert``/``--key``), so one ``ca.pem`` validates both.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import threading
from pathlib import Path

import trustme

from tools.pc_emulator.models import Sandbox, full_sandbox_customers
from tools.pc_emulator.server import EmulatorServer

HERE = Path(__file__).resolve().parent


def make_tls(state_dir: Path) -> tuple[ssl.SSLContext, Path]:
    """A fresh CA per start; the server certificate covers 127.0.0.1, ::1 and localhost. A second certificate from
    the same CA, for Azurite's HTTPS (identity-based storage), goes to ``storage-cert.pem`` / ``storage-key.pem``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Partner Center emulator (local testing only)")
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_path = state_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    storage = ca.issue_cert("127.0.0.1", "localhost", "::1")
    key_path = state_dir / "storage-key.pem"
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)  # also when an earlier start left it
    storage.private_key_pem.write_to_path(str(key_path))
    with open(state_dir / "storage-cert.pem", "wb") as out:
        for pem in storage.cert_chain_pems:
            out.write(pem.bytes())
    return context, ca_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pc_emulator", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seed", default=str(HERE / "sample_sandbox.json"), help="sandbox JSON file (default: the sample)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="port, 0 for any free one (default 8443)")
    parser.add_argument("--state-dir", default=".local/emulator", help="where ca.pem and emulator.json go")
    parser.add_argument(
        "--full-sandbox", type=int, default=0, metavar="N", help="also N generated test-run customers (default 0)"
    )
    parser.add_argument(
        "--full-sandbox-seed",
        type=int,
        default=7,
        metavar="SEED",
        help="random seed of the generated customers (default 7)",
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the emulator listens on loopback only")
    if not 0 <= args.full_sandbox <= 10000:
        parser.error("--full-sandbox takes 0 to 10000 customers")

    seed = json.loads(Path(args.seed).read_text(encoding="utf-8"))
    if args.full_sandbox:
        seed["customers"] = list(seed.get("customers") or []) + full_sandbox_customers(
            args.full_sandbox, seed=args.full_sandbox_seed
        )
    state_dir = Path(args.state_dir)
    context, ca_path = make_tls(state_dir)
    server = EmulatorServer((args.host, args.port), Sandbox(seed), context)
    port = server.server_address[1]
    url = f"https://127.0.0.1:{port}"
    sandbox = server.sandbox
    (state_dir / "emulator.json").write_text(
        json.dumps(
            {
                "url": url,
                "ca": str(ca_path.resolve()),
                "partner": seed.get("partner"),
                "storageIdentity": sandbox.storage_identity,
                "storageTls": {
                    "cert": str((state_dir / "storage-cert.pem").resolve()),
                    "key": str((state_dir / "storage-key.pem").resolve()),
                },
            }
        ),
        encoding="utf-8",
    )

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"Partner Center emulator listening on {url} (CA {ca_path}); admin: {url}/_emulator/state", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
