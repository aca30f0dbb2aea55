"""Which Python versions the app supports, and where the other end of that range is on this machine (dev only).

    python tools/pythons.py check       exit 1 with a plain reason if this Python is not supported (a warning
                                        if it is newer than the tested ones)
    python tools/pythons.py other-end   path of a Python at the other end of the supported range, or nothing
    python tools/pythons.py preferred   the development default: the newest supported Python this machine really
                                        runs (3.13, whose worker in Azure is Microsoft's runtime, which the local
                                        host then runs too), else the Python running this

Run as a file by the Makefile before any virtual environment exists, so it imports nothing of the project.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

#: Supported and tested: Azure Functions runs Python 3.11 (until Oct 2027), 3.12 (Oct 2028) and 3.13 (Oct 2029).
#: 3.10 is not: Functions support for it ended in October 2026, and Flex Consumption does not offer it.
SUPPORTED = ((3, 11), (3, 12), (3, 13))


def dotted(version: tuple[int, int]) -> str:
    """``(3, 11)`` as ``"3.11"``."""
    return f"{version[0]}.{version[1]}"


def verdict(version: tuple[int, int]) -> tuple[bool, str]:
    """(accepted, message): the message is empty for a supported version, a warning or the refusal otherwise."""
    shown = dotted(version)
    names = [dotted(v) for v in SUPPORTED]
    wanted = ", ".join(names[:-1]) + " or " + names[-1]
    if version in SUPPORTED:
        return True, ""
    if version > SUPPORTED[-1]:
        return True, (
            f"warning: Python {shown} is newer than this project has been tested on ({wanted}); "
            f"it is used anyway. If something fails, run make with PYTHON=python{SUPPORTED[-1][0]}.{SUPPORTED[-1][1]}."
        )
    reason = " (Azure Functions ended support for 3.10 in October 2026)" if version == (3, 10) else ""
    return False, (
        f"Python {shown} is not supported{reason}. This project needs Python {wanted}: "
        f"install one and run make with PYTHON=python3.13 (or the path to it)."
    )


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if out.returncode == 0 and len(parts) == 2 else None


def find(version: tuple[int, int]) -> str | None:
    """A working interpreter of ``version``: ``python3.X`` on PATH (a
    pyenv shim may exist and still refuse), or pyenv's."""
    name = f"python{dotted(version)}"
    candidates = [shutil.which(name)]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(root, "versions", f"{dotted(version)}.*", "bin", name)), reverse=True)
    for candidate in candidates:
        if candidate and _version_of(candidate) == version:
            return candidate
    return None


def other_end(version: tuple[int, int]) -> tuple[int, int]:
    """The newest supported version for a Python below it, else the oldest."""
    return SUPPORTED[-1] if version < SUPPORTED[-1] else SUPPORTED[0]


def preferred(found: dict[tuple[int, int], str | None] | None = None) -> str:
    """The development default: the newest supported version found (``find``), else this interpreter."""
    for version in reversed(SUPPORTED):
        path = found.get(version) if found is not None else find(version)
        if path:
            return path
    return sys.executable


def main(argv: list[str]) -> int:
    here = sys.version_info[:2]
    if argv[1:] == ["check"]:
        ok, message = verdict(here)
        if message:
            print(message, file=sys.stderr)
        return 0 if ok else 1
    if argv[1:] == ["other-end"]:
        found = find(other_end(here))
        if found:
            print(found)
        return 0
    if argv[1:] == ["preferred"]:
        print(preferred())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
