"""The LiveKit adapter is optional: the core install does not pull it, and without it the
import fails with an error that says what to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

BLOCK_LIVEKIT = """
import importlib.abc, sys
class NoLiveKit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "livekit" or name.startswith("livekit."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoLiveKit())
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_LIVEKIT + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_the_core_install_does_not_pull_livekit_and_the_extra_pins_a_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "livekit" in d.lower()]
    for name, requirements in project["optional-dependencies"].items():
        if name != "livekit":
            assert not [r for r in requirements if "livekit" in r.lower()], name
    (requirement,) = project["optional-dependencies"]["livekit"]
    assert requirement.startswith("livekit-agents>=") and ",<" in requirement


def test_without_livekit_the_adapter_says_which_extra_to_install() -> None:
    result = run("import quicvoice.integrations.livekit")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: quicvoice.integrations.livekit needs LiveKit Agents")
    assert "pip install 'quicvoice[livekit]'" in last


def test_the_rest_of_quicvoice_imports_without_livekit() -> None:
    result = run(
        "import quicvoice, quicvoice.app, quicvoice.integrations, quicvoice.cli\n"
        "assert not [m for m in sys.modules if m.startswith('livekit')]\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_quicvoice_serve_can_load_the_example() -> None:
    pytest.importorskip("livekit.agents", reason="needs the livekit extra")
    from quicvoice.app import App, load_app

    app = load_app("examples.livekit_agent:app", app_dir=ROOT)
    assert isinstance(app, App) and app.sample_rate == 16000
