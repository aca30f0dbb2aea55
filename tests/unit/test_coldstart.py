"""tools/coldstart.py: the -X importtime parser on a captured sample, and one real measurement."""

import json
import sys

import pytest

from tools.coldstart import ROOT, find_module, function_module, heaviest, import_cost, package_of, parse_importtime

# Post-order, as CPython writes it: a module's line follows the lines of what it imported, two spaces deeper.
SAMPLE = """\
import time: self [us] | cumulative | imported package
import time:       150 |        150 |   encodings.aliases
import time:       850 |       1000 | encodings
some unrelated line on stderr
import time:      1000 |       1000 |         werkzeug._internal
import time:      4000 |       5000 |       werkzeug
import time:      3000 |       8000 |     azure.functions._abc
import time:      1000 |       9000 |   azure.functions
import time:       300 |        300 |       shared.ids
import time:      1000 |       1300 |     shared.config
import time:      2500 |       2500 |           requests
import time:      1500 |       4000 |         azure.core
import time:      3000 |       7000 |       azure.storage.queue
import time:      1500 |       1500 |       azure.core.exceptions
import time:       500 |       9000 |     shared.queues
import time:       500 |      10800 |   shared.app
import time:       200 |      20000 | __app__.poll_orders
"""


def test_parse_builds_the_import_tree():
    roots = parse_importtime(SAMPLE)
    assert [r.name for r in roots] == ["encodings", "__app__.poll_orders"]
    assert [c.name for c in roots[0].children] == ["encodings.aliases"]
    target = roots[1]
    assert (target.depth, target.self_us, target.cumulative_us, target.cumulative_ms) == (0, 200, 20000, 20.0)
    assert [c.name for c in target.children] == ["azure.functions", "shared.app"]
    app = target.children[1]
    assert [c.name for c in app.children] == ["shared.config", "shared.queues"]
    assert [c.name for c in app.children[1].children] == ["azure.storage.queue", "azure.core.exceptions"]
    werkzeug = find_module(roots, "werkzeug")
    assert werkzeug is not None
    assert (werkzeug.depth, werkzeug.cumulative_us, [c.name for c in werkzeug.children]) == (
        3,
        5000,
        ["werkzeug._internal"],
    )
    assert len(list(target.walk())) == 13


def test_find_module_top_level_only_sees_root_lines():
    roots = parse_importtime(SAMPLE)
    node = find_module(roots, "requests")
    assert node is not None and node.depth == 5
    assert find_module(roots, "requests", top_level=True) is None
    assert find_module(roots, "__app__.poll_orders", top_level=True) is roots[1]
    assert find_module(roots, "not.imported") is None


def test_heaviest_counts_each_package_at_its_outermost_lines():
    target = find_module(parse_importtime(SAMPLE), "__app__.poll_orders")
    assert target is not None
    assert heaviest(target) == [
        ("shared", 10.8),
        ("azure.functions", 9.0),
        ("azure.storage.queue", 7.0),
        ("azure.core", 5.5),
        ("werkzeug", 5.0),
        ("requests", 2.5),
    ]
    assert heaviest(target, n=2) == [("shared", 10.8), ("azure.functions", 9.0)]
    assert ("encodings", 1.0) not in heaviest(target)  # start-up is not part of the function's import


def test_parse_ignores_everything_else():
    assert parse_importtime("") == []
    assert (
        parse_importtime("Traceback (most recent call last):\nimport time: self [us] | cumulative | imported package\n")
        == []
    )


@pytest.mark.parametrize(
    "module, package",
    [
        ("azure.storage.queue._shared.base_client", "azure.storage.queue"),
        ("azure.identity._credentials.default", "azure.identity"),
        ("azure.functions", "azure.functions"),
        ("azure", "azure"),
        ("requests.adapters", "requests"),
        ("shared.app", "shared"),
        ("_ssl", "_ssl"),
    ],
)
def test_package_of(module, package):
    assert package_of(module) == package


def test_function_module_follows_script_file(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "function.json").write_text(json.dumps({"scriptFile": "run.py", "bindings": []}))
    assert function_module(tmp_path, "f") == "__app__.f.run"
    assert function_module(ROOT, "poll_orders") == "__app__.poll_orders"


def test_real_import_of_a_function_folder():
    result = import_cost(ROOT, "poll_orders", python=sys.executable, runs=1)
    assert result["function"] == "poll_orders" and result["module"] == "__app__.poll_orders"
    assert result["total_ms"] > 0
    top = dict(result["top"])
    assert "shared" in top and 0 < top["shared"] <= result["total_ms"]  # the app's own package, from the app root
    assert 0 < len(result["top"]) <= 10
    assert all(ms <= result["total_ms"] for _, ms in result["top"])
    assert result["wall_ms"] > result["total_ms"]  # the process includes interpreter start-up


def test_worker_telemetry_start_up_is_measured_in_a_fresh_process():
    from tools.coldstart import worker_telemetry_cost

    result = worker_telemetry_cost(sys.executable, runs=1)
    assert result["runs"] == 1 and result["import_ms"] > 0 and result["configure_ms"] > 0
    assert result["wall_ms"] > result["import_ms"] + result["configure_ms"]  # the process includes interpreter start-up
    with pytest.raises(RuntimeError, match="telemetry start-up failed"):
        worker_telemetry_cost("/bin/false", runs=1)
