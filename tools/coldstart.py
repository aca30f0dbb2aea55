"""Import cost of each function folder, as a cold worker pays it: ``python -m tools.coldstart`` prints a table.

Every measurement is a fresh ``python -X importtime`` process that indexes the function the way the Python worker
(and ``tools/local_host/indexing.py`` ``load_entry_points``) does: the app root first on ``sys.path``, a synthetic
``__app__`` package whose search location is the app root, then ``__app__.<folder>`` (or ``__app__.<folder>.<stem>``
for a ``scriptFile`` other than ``__init__.py``). Only the ``-X importtime`` lines count: ``total_ms`` is the
cumulative time of the function module's own line, so interpreter start-up, ``site`` and the harness's imports are
not in it; ``wall_ms`` is the whole process, start-up included.

The host imports with ``importlib.import_module``, which CPython does not report to ``-X importtime`` (the timing sits
in the C ``__import__`` path). The harness therefore uses ``__import__``: same name, same ``__app__`` search location,
same finders and the same modules loaded, plus the one line that is the function's total.

The subprocess inherits this environment. With ``PYTHONDONTWRITEBYTECODE=1`` (or a read-only, run-from-package
``wwwroot`` whose package leaves out ``__pycache__/``, see .funcignore) the app's own modules are compiled on every
cold start; ``pycache_prefix`` / ``--cached-bytecode`` measures with their bytecode cached outside the tree instead.
The Python worker has imported ``azure.functions`` before it loads a function; ``preload`` / ``--preload
azure.functions`` takes modules out of the measured import the same way. Development tool only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ImportNode",
    "find_module",
    "function_module",
    "heaviest",
    "import_cost",
    "main",
    "module_cost",
    "package_of",
    "parse_importtime",
    "worker_telemetry_cost",
]

ROOT = Path(__file__).resolve().parent.parent

#: ``import time: <self us> | <cumulative us> | <2 spaces per nesting level><module>`` (CPython 3.7+).
_LINE_RE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\| ( *)(\S+)\s*$")

#: Namespace packages: a package is named by one more component than these (azure.identity, azure.storage.queue).
NAMESPACES = (
    "azure.storage",
    "azure.mgmt",
    "azure",
    "google.cloud",
    "google",
    "opentelemetry.instrumentation",
    "opentelemetry",
)

# argv: app root, module to measure, modules to import first. Mirrors tools/local_host/indexing.py load_entry_points.
_HARNESS = """\
import sys, importlib.machinery, importlib.util
root, target, preload = sys.argv[1], sys.argv[2], sys.argv[3:]
if root not in sys.path:
    sys.path.insert(0, root)
if "__app__" not in sys.modules:
    spec = importlib.machinery.ModuleSpec("__app__", None, is_package=True)
    spec.submodule_search_locations = [root]
    sys.modules["__app__"] = importlib.util.module_from_spec(spec)
for name in preload:
    __import__(name)
__import__(target)
"""


@dataclass
class ImportNode:
    """One ``-X importtime`` line; ``children`` are the modules first imported while it was being imported."""

    name: str
    self_us: int
    cumulative_us: int
    depth: int
    children: list[ImportNode] = field(default_factory=list)

    @property
    def cumulative_ms(self) -> float:
        return self.cumulative_us / 1000.0

    def walk(self) -> Iterable[ImportNode]:
        yield self
        for child in self.children:
            yield from child.walk()


def parse_importtime(text: str) -> list[ImportNode]:
    """The import tree of ``-X importtime`` output (top-level imports, in order); other lines are ignored.

    The lines come in post-order: a module's line follows those of everything first imported during its import, one
    level deeper. A line therefore adopts the pending lines deeper than itself.
    """
    pending: list[ImportNode] = []
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        node = ImportNode(m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2)
        children = []
        while pending and pending[-1].depth > node.depth:
            children.append(pending.pop())
        node.children = children[::-1]
        pending.append(node)
    return pending


def find_module(roots: Sequence[ImportNode], name: str, *, top_level: bool = False) -> ImportNode | None:
    """The line of ``name`` (imported once per process, so at most one), or None; ``top_level``: only a root line,
    i.e. not first imported by another module."""
    for root in roots:
        for node in [root] if top_level else root.walk():
            if node.name == name:
                return node
    return None


def package_of(module: str) -> str:
    """The package a module belongs to: its first component, one more inside a namespace package."""
    for ns in NAMESPACES:
        if module == ns:
            return module
        if module.startswith(ns + "."):
            return ".".join(module.split(".")[: ns.count(".") + 2])
    return module.split(".", 1)[0]


def heaviest(node: ImportNode, n: int = 10) -> list[tuple[str, float]]:
    """The ``n`` packages with the largest cumulative import time (ms) inside ``node``'s import, heaviest first.

    A package's time is that of its outermost lines: a line nested in a line of the same package is already counted
    (``requests`` inside ``requests``), one nested in another package is not (``werkzeug`` inside
    ``azure.functions`` is listed on its own, and is also part of ``azure.functions``).
    """
    totals: dict[str, int] = {}

    def visit(current: ImportNode, open_packages: frozenset[str]) -> None:
        for child in current.children:
            pkg = package_of(child.name)
            if pkg not in open_packages:
                totals[pkg] = totals.get(pkg, 0) + child.cumulative_us
            visit(child, open_packages | {pkg})

    visit(node, frozenset())
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [(pkg, us / 1000.0) for pkg, us in ranked]


def function_module(app_root: Path, function: str) -> str:
    """The module name the worker imports for a function folder (``scriptFile`` of its function.json)."""
    spec = json.loads((Path(app_root) / function / "function.json").read_text(encoding="utf-8-sig"))
    script = spec.get("scriptFile", "__init__.py")
    return f"__app__.{function}" if script == "__init__.py" else f"__app__.{function}.{Path(script).stem}"


def _environment(pycache_prefix: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if pycache_prefix is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache_prefix
    return env


def _measure(
    app_root: Path, target: str, *, python: str, runs: int, preload: Sequence[str], pycache_prefix: str | None, top: int
) -> dict:
    if runs < 1:
        raise ValueError("runs must be at least 1")
    root = str(Path(app_root).resolve())
    cmd = [python, "-X", "importtime", "-c", _HARNESS, root, target, *preload]
    env = _environment(pycache_prefix)
    totals, walls, tops = [], [], []
    for i in range(runs + 1):  # the first run only warms the file cache (and the bytecode cache, if any)
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"importing {target} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        node = find_module(parse_importtime(proc.stderr), target, top_level=True)
        if node is None:
            raise RuntimeError(
                f"no top-level importtime line for {target}: imported already (by {list(preload) or 'start-up'})?"
            )
        if i == 0:
            continue
        totals.append(node.cumulative_us / 1000.0)
        walls.append(wall * 1000.0)
        tops.append(dict(heaviest(node, n=10**6)))
    packages = {pkg for run in tops for pkg in run}
    medians = {pkg: statistics.median(run.get(pkg, 0.0) for run in tops) for pkg in packages}
    ranked = sorted(medians.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "module": target,
        "total_ms": round(statistics.median(totals), 2),
        "top": [(pkg, round(ms, 2)) for pkg, ms in ranked],
        "wall_ms": round(statistics.median(walls), 2),
        "runs": runs,
    }


def import_cost(
    app_root: Path,
    function: str,
    python: str = sys.executable,
    runs: int = 5,
    *,
    preload: Sequence[str] = (),
    pycache_prefix: str | None = None,
    top: int = 10,
) -> dict:
    """Import cost of one function folder, medians over ``runs`` fresh processes (after one uncounted warm-up).

    Returns ``{"function", "module", "total_ms", "top": [(package, cumulative_ms)], "wall_ms", "runs"}``: ``total_ms``
    the cumulative importtime of ``__app__.<function>``, ``top`` the ``top`` heaviest packages inside it,
    ``wall_ms`` the whole process (interpreter start-up included).
    """
    result = _measure(
        Path(app_root),
        function_module(Path(app_root), function),
        python=python,
        runs=runs,
        preload=preload,
        pycache_prefix=pycache_prefix,
        top=top,
    )
    return {"function": function, **result}


def module_cost(
    module: str,
    app_root: Path = ROOT,
    python: str = sys.executable,
    runs: int = 5,
    *,
    preload: Sequence[str] = (),
    pycache_prefix: str | None = None,
    top: int = 10,
) -> dict:
    """The same measurement for any module (``azure.identity``, ``shared.auth``), in the same harness."""
    return _measure(
        Path(app_root), module, python=python, runs=runs, preload=preload, pycache_prefix=pycache_prefix, top=top
    )


# What the Python worker does at its start when PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true, before it loads a
# function: import the Azure Monitor distro and call configure_azure_monitor(connection_string, logger_name). The
# connection string's ingestion endpoint is a closed loopback port
# and EXPORTER_OFFLINE is set: nothing leaves the machine.
# The process ends with os._exit, so no exporter flushes at exit (that is shutdown, not start-up).
_TELEMETRY_HARNESS = """\
import json, os, time
os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_functions")
t0 = time.perf_counter()
from azure.monitor.opentelemetry import configure_azure_monitor
t1 = time.perf_counter()
configure_azure_monitor(connection_string=os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"], logger_name="")
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1000, "configure_ms": (t2 - t1) * 1000}), flush=True)
os._exit(0)
"""

#: What keeps an Azure Monitor exporter on loopback here: no statsbeat, no customer SDK stats, no control-plane settings
#: fetch (each is a background call to a public Microsoft endpoint otherwise). No Entra authentication is in this list:
#: callers remove APPLICATIONINSIGHTS_AUTHENTICATION_STRING (a managed
#: identity would probe the instance metadata address).
EXPORTER_OFFLINE = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}

#: A connection string of the documented form whose ingestion endpoint is a closed loopback port.
LOOPBACK_CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:9/"
)


def worker_telemetry_cost(python: str = sys.executable, runs: int = 5, *, pycache_prefix: str | None = None) -> dict:
    """The worker's telemetry start-up: importing azure.monitor.opentelemetry and configure_azure_monitor(), as the
    Python worker runs them with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true, medians of ``runs`` fresh processes
    (after one uncounted warm-up). Entra authentication is left out: its credential would be a managed identity, and
    nothing here may ask the instance metadata address for a token (making the credential costs microseconds)."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    env = _environment(pycache_prefix)
    env.pop("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", None)
    env.update({"APPLICATIONINSIGHTS_CONNECTION_STRING": LOOPBACK_CONNECTION_STRING, **EXPORTER_OFFLINE})
    imports, configures, walls = [], [], []
    for i in range(runs + 1):
        started = time.perf_counter()
        proc = subprocess.run([python, "-c", _TELEMETRY_HARNESS], env=env, capture_output=True, text=True, timeout=300)
        wall = (time.perf_counter() - started) * 1000.0
        if proc.returncode != 0 or not proc.stdout.strip():
            raise RuntimeError(f"the telemetry start-up failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        if i == 0:
            continue
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        imports.append(figures["import_ms"])
        configures.append(figures["configure_ms"])
        walls.append(wall)
    return {
        "import_ms": round(statistics.median(imports), 1),
        "configure_ms": round(statistics.median(configures), 1),
        "wall_ms": round(statistics.median(walls), 1),
        "runs": runs,
    }


def _functions(app_root: Path) -> list[str]:
    return [fj.parent.name for fj in sorted(Path(app_root).glob("*/function.json"))]


def _table(rows: list[dict], shown: int) -> str:
    out = [
        "| function | import total (ms) | process wall (ms) | heaviest packages inside (cumulative ms) |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        heavy = ", ".join(f"{pkg} {ms:.1f}" for pkg, ms in r["top"][:shown])
        out.append(f"| {r.get('function', r['module'])} | {r['total_ms']:.1f} | {r['wall_ms']:.1f} | {heavy} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.coldstart", description=__doc__.split("\n\n")[0])
    p.add_argument("functions", nargs="*", help="function folders (default: every */function.json)")
    p.add_argument("--app-root", type=Path, default=ROOT)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--top", type=int, default=5, help="packages shown per function")
    p.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="import first, outside the measurement (the worker has azure.functions loaded already)",
    )
    p.add_argument(
        "--cached-bytecode",
        action="store_true",
        help="cache the app's bytecode in a temporary PYTHONPYCACHEPREFIX (default: as this environment)",
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="also measure this module on its own (e.g. azure.identity)",
    )
    p.add_argument(
        "--worker-telemetry",
        action="store_true",
        help="also measure the worker's telemetry start-up (azure.monitor.opentelemetry, configure_azure_monitor)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="coldstart-pyc-") as tmp:
        prefix = tmp if args.cached_bytecode else None
        kw = {"python": args.python, "runs": args.runs, "preload": args.preload, "pycache_prefix": prefix}
        try:
            rows = [import_cost(args.app_root, name, **kw) for name in (args.functions or _functions(args.app_root))]
            rows += [module_cost(name, args.app_root, **kw) for name in args.module]
            telemetry = (
                worker_telemetry_cost(args.python, args.runs, pycache_prefix=prefix) if args.worker_telemetry else None
            )
        except (RuntimeError, ValueError, OSError) as exc:
            print(f"coldstart: {exc}", file=sys.stderr)
            return 2
    print(_table(rows, args.top))
    bytecode = (
        "cached"
        if args.cached_bytecode
        else f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}"
    )
    if telemetry:
        print(
            f"\nworker telemetry start-up (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true): import "
            f"azure.monitor.opentelemetry {telemetry['import_ms']:.1f} ms, configure_azure_monitor "
            f"{telemetry['configure_ms']:.1f} ms, "
            f"whole process {telemetry['wall_ms']:.1f} ms"
        )
    print(
        f"\nmedians of {args.runs} runs; {args.python}; preloaded: {', '.join(args.preload) or 'nothing'}; "
        f"app bytecode: {bytecode}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
