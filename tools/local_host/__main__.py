"""Run the function app's queue and timer triggers locally against Azurite, the way ``func start`` would.

    python -m tools.local_host --settings local.settings.json [--admin-port 7071] [--state-dir .local/local_host]

Reads the same local settings file a user would give ``func start`` (its ``Values`` become environment variables
and win over variables inherited from the shell, so a machine-wide ``REQUESTS_CA_BUNDLE`` cannot hide the emulator's
CA), then host.json. Timer schedules are in UTC; their schedule status and singleton locks live under
``--state-dir``. ``POST http://127.0.0.1:<admin-port>/admin/functions/<name>`` with ``{"input": "..."}`` runs a
function at once. Stop it with Ctrl-C or SIGTERM: it stops polling and timers and lets running invocations finish.
Exit status 2: the host could not start (the log says why). A development tool, not a production host.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from tools.local_host.host import HostError, LocalHost, load_local_settings

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_host", description=__doc__.split("\n")[0])
    parser.add_argument("--app-root", default=str(ROOT), help="folder with host.json and the function folders")
    parser.add_argument(
        "--settings",
        default=str(ROOT / "local.settings.json"),
        help="local settings file (default local.settings.json)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=int,
        default=int(os.environ.get("LOCAL_HOST_LEASE_SECONDS", "600")),
        help="message lease while a function runs (Azure: 600, renewed at half time); shorter for crash tests",
    )
    parser.add_argument("--functions", default="", help="comma-separated function names to run (default: all)")
    parser.add_argument(
        "--state-dir",
        default=None,
        help="timer schedule status and singleton locks (default <app-root>/.local/local_host)",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=7071,
        help="port of the admin endpoint on 127.0.0.1 (default 7071, as func start; 0 = any free port)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOCAL_HOST_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not 0 <= args.admin_port <= 65535:
        parser.error("--admin-port must be 0..65535")

    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    for noisy in ("azure", "urllib3", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings_path = Path(args.settings)
    if settings_path.exists():
        for key, value in load_local_settings(settings_path).items():
            os.environ[key] = value
    else:
        logging.getLogger("local_host").warning("%s not found; using the environment only", settings_path)
    try:
        app_root = Path(args.app_root)
        host = LocalHost(
            app_root,
            os.environ,
            lease_seconds=args.lease_seconds,
            functions={f for f in args.functions.split(",") if f} or None,
            state_dir=Path(args.state_dir) if args.state_dir else app_root / ".local" / "local_host",
            admin_port=args.admin_port,
        )
        host.start()
    except HostError as exc:
        logging.getLogger("local_host").error("%s", exc)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("Local Functions host running; Ctrl-C to stop.", flush=True)
    done.wait()
    logging.getLogger("local_host").info("stopping: waiting for running invocations")
    host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
