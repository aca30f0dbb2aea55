"""Run the function app's queue triggers locally against Azurite, the way ``func start`` would.

    python -m tools.local_host --settings local.settings.json

Reads the same local settings file a user would give ``func start`` (its ``Values`` become environment variables
and win over variables inherited from the shell, so a machine-wide ``REQUESTS_CA_BUNDLE`` cannot hide the emulator's
CA), then host.json. Stop it with Ctrl-C or SIGTERM: it stops polling
and lets running invocations finish. A development tool, not a production host.
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
    parser.add_argument("--settings", default=str(ROOT / "local.settings.json"), help="local settings file (default local.settings.json)")
    parser.add_argument("--lease-seconds", type=int, default=int(os.environ.get("LOCAL_HOST_LEASE_SECONDS", "600")),
                        help="message lease while a function runs (Azure: 600, renewed at half time); shorter for crash tests")
    parser.add_argument("--functions", default="", help="comma-separated function names to run (default: all)")
    parser.add_argument("--log-level", default=os.environ.get("LOCAL_HOST_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings_path = Path(args.settings)
    if settings_path.exists():
        for key, value in load_local_settings(settings_path).items():
            os.environ[key] = value
    else:
        logging.getLogger("local_host").warning("%s not found; using the environment only", settings_path)
    try:
        host = LocalHost(Path(args.app_root), os.environ, lease_seconds=args.lease_seconds,
                         functions={f for f in args.functions.split(",") if f} or None)
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
