"""What `func azure functionapp publish` and `azd deploy` put into the package, given `.funcignore`.

Both zip the project folder (the repository root) minus the `.funcignore` patterns, which follow .gitignore's rules.
`pathspec` is not a dependency, so a small matcher for those rules is here, checked against known cases first.
The files are the ones git tracks and the new ones it would track, plus what exists only on a developer's machine
(.venv/, node_modules/, local.settings.json, ...), since the publish zips the folder, not git's list.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("delete_customer", "deletion_status", "poll_orders", "sweep_customers")

# Untracked (gitignored) things a working copy has, which a publish from it must not ship.
MACHINE_ONLY = [
    ".venv/bin/python",
    ".venv-lowest/bin/python",
    ".venv-other/bin/python",
    "node_modules/.bin/azurite",
    "local.settings.json",
    "local.settings.azure.json",
    ".local/emulator/ca.pem",
    "shared/__pycache__/config.cpython-311.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".hypothesis/examples/x",
    ".mypy_cache/3.11/shared/config.data.json",
    ".ruff_cache/0.17.5/123",
    ".azure/dev/.env",
    ".azure/config.json",
    ".vscode/settings.json",
    ".env",
    # Azurite's files when it runs in the repository root without --inMemoryPersistence
    "__azurite_db_queue__.json",
    "__azurite_db_queue_extent__.json",
    "__queuestorage__/x",
    "__blobstorage__/x",
]
MUST_SHIP = [
    "host.json",
    "requirements.txt",
    "shared/__init__.py",
    "shared/config.py",
    *(f"{f}/{name}" for f in FUNCTIONS for name in ("__init__.py", "function.json")),
]
MUST_NOT_SHIP_PREFIXES = [
    "infra/",
    "tests/",
    "tools/",
    ".ci/",
    ".git",
    ".venv/",
    "node_modules/",
    ".azure/",
    ".local/",
    "__pycache__/",
    ".mypy_cache/",
    ".ruff_cache/",
    "__azurite_db_",
    "__queuestorage__/",
    "__blobstorage__/",
]
MUST_NOT_SHIP_FILES = [
    "azure.yaml",
    "Makefile",
    "requirements-dev.txt",
    "package.json",
    "package-lock.json",
    "local.settings.json",
    "local.settings.example.json",
    "local.settings.azure.json",
    "pyproject.toml",
    "README.md",
    "UPGRADING.md",
    ".funcignore",
    ".gitignore",
]


def _translate(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class IgnoreRules:
    """.gitignore semantics: last matching rule wins, `!` re-includes, a trailing `/` matches directories only,
    a pattern with a `/` elsewhere is anchored to the root (else it matches a name at any depth), and nothing under an
    excluded directory can be re-included."""

    def __init__(self, text: str):
        self.rules: list[tuple[re.Pattern[str], bool, bool, bool]] = []  # (regex, negate, dir_only, anchored)
        for line in text.splitlines():
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            anchored = "/" in line
            self.rules.append((re.compile(_translate(line.lstrip("/"))), negate, dir_only, anchored))

    def _matches(self, path: str, is_dir: bool) -> bool | None:
        result = None
        for regex, negate, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            if regex.fullmatch(path if anchored else path.rsplit("/", 1)[-1]):
                result = not negate
        return result

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if self._matches("/".join(parts[:i]), is_dir=True):
                return True
        return bool(self._matches(path, is_dir=False))


def packaged(files: list[str], funcignore: str) -> set[str]:
    rules = IgnoreRules(funcignore)
    return {f for f in files if not rules.excluded(f)}


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return sorted({f for f in listed if f and (ROOT / f).exists()} | set(MACHINE_ONLY))


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        ("tests/", "tests/unit/test_x.py", True),
        ("tests/", "tests", False),  # a file called tests: dir-only pattern
        ("__pycache__/", "shared/__pycache__/x.pyc", True),
        ("infra/", "infra/app/api.bicep", True),
        ("/infra", "shared/infra/x", False),
        ("infra", "shared/infra/x", True),
        ("*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),
        ("docs/**/*.md", "docs/sub/a.md", True),
        ("local.settings*.json", "local.settings.example.json", True),
        (".git*", ".gitignore", True),
        (".git*", ".github/workflows/x.yml", True),
        ("azure.yaml", "azure.yaml", True),
        ("azure.yaml", "shared/azure.yaml.py", False),
        ("*.py\n!shared/*.py", "shared/config.py", False),
        ("shared/\n!shared/config.py", "shared/config.py", True),  # no re-include under an excluded directory
        ("# comment\n\nMakefile", "Makefile", True),
    ],
)
def test_the_matcher_follows_gitignore_rules(pattern: str, path: str, expected: bool) -> None:
    assert IgnoreRules(pattern).excluded(path) is expected


def check_package(files: list[str], funcignore: str) -> None:
    shipped = packaged(files, funcignore)
    for name in MUST_SHIP:
        assert name in files, f"{name} is not in the project"
        assert name in shipped, f"{name} must be in the package"
    for name in shipped:
        for prefix in MUST_NOT_SHIP_PREFIXES:
            assert not name.startswith(prefix) and f"/{prefix}" not in f"/{name}", f"{name} must not be in the package"
        assert name not in MUST_NOT_SHIP_FILES, f"{name} must not be in the package"
    assert any(name.startswith("shared/") for name in shipped)


def test_the_package_holds_the_app_and_nothing_dev_only() -> None:
    check_package(project_files(), (ROOT / ".funcignore").read_text(encoding="utf-8"))


def test_the_package_ships_only_python_json_and_requirements() -> None:
    shipped = packaged(project_files(), (ROOT / ".funcignore").read_text(encoding="utf-8"))
    odd = sorted(n for n in shipped if not re.search(r"\.(py|json)$|^requirements\.txt$", n))
    assert not odd, f"unexpected files in the package: {odd}"


@pytest.mark.parametrize(
    "line",
    [
        "infra/",
        "azure.yaml",
        "tests/",
        "tools/",
        "node_modules/",
        "local.settings*.json",
        ".azure/",
        "Makefile",
        ".ci/",
        "__azurite_db_*",
        "__queuestorage__/",
    ],
)
def test_dropping_a_funcignore_line_is_noticed(line: str) -> None:
    text = (ROOT / ".funcignore").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert line in lines
    broken = "\n".join(item for item in lines if item != line)
    with pytest.raises(AssertionError):
        check_package(project_files(), broken)


def test_ignoring_the_app_is_noticed() -> None:
    text = (ROOT / ".funcignore").read_text(encoding="utf-8")
    for extra in ("shared/", "*.json", "requirements*.txt", "poll_orders"):
        with pytest.raises(AssertionError):
            check_package(project_files(), text + "\n" + extra + "\n")


DEV_ONLY_DISTRIBUTIONS = ("azure-functions-runtime-v1", "protobuf")


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\s;<>=!~\[]", line, maxsplit=1)[0].lower())
    return names


def test_the_worker_runtime_is_a_development_dependency_only() -> None:
    """The local host drives the functions through Microsoft's runtime; Azure brings its own, so the package's
    requirements.txt (what the remote build installs) must not name it, and shipped code must not import it."""
    dev = _requirement_names((ROOT / "requirements-dev.txt").read_text(encoding="utf-8"))
    shipped_requirements = _requirement_names((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    for name in DEV_ONLY_DISTRIBUTIONS:
        assert name in dev
        assert name not in shipped_requirements, f"{name} must not be deployed"
    shipped = packaged(project_files(), (ROOT / ".funcignore").read_text(encoding="utf-8"))
    for name in sorted(n for n in shipped if n.endswith(".py")):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import)\s+(azure_functions_runtime_v1|tools)\b", text, re.M), name


def test_a_runtime_line_in_requirements_txt_is_noticed() -> None:
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert "azure-functions-runtime-v1" in _requirement_names(
        text + '\nazure-functions-runtime-v1==1.2.0; python_version >= "3.13"\n'
    )
