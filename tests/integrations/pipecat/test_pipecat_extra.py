"""``quicvoice[pipecat]`` is declared right: the core install never pulls Pipecat, the extra
does, and without it the adapter's import error names the extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def project() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return dict(tomllib.load(file)["project"])


def names(requirements: object) -> set[str]:
    assert isinstance(requirements, list)
    return {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
            for r in requirements}  # fmt: skip


def test_the_core_install_does_not_pull_pipecat() -> None:
    assert "pipecat-ai" not in names(project()["dependencies"])


def test_the_pipecat_extra_pulls_a_bounded_pipecat_ai() -> None:
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    (requirement,) = extras["pipecat"]
    assert requirement.startswith("pipecat-ai>=") and "<" in requirement
    for name, listed in extras.items():  # no other extra drags it in (dev installs it apart)
        if name != "pipecat":
            assert "pipecat-ai" not in names(listed), name


def test_importing_the_adapter_without_pipecat_names_the_extra() -> None:
    # ``sys.modules[name] = None`` makes any import of that name fail, as if not installed.
    code = (
        "import sys; sys.modules['pipecat'] = None\n"
        "import quicvoice, quicvoice.integrations\n"
        "try:\n"
        "    import quicvoice.integrations.pipecat\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'quicvoice[pipecat]'" in result.stdout


def test_the_package_root_imports_no_framework() -> None:
    code = "import quicvoice.integrations, sys; print('pipecat' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr
