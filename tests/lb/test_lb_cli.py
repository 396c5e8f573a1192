"""The ``quicvoice-lb`` command line: clear one-line errors, exit status 2, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lb.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lb.toml"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --config"),
        (["--config", str(EXAMPLE), "--workers", "0"], "--workers: must be between 1 and"),
        (["--config", str(EXAMPLE), "--workers", "two"], "--workers: 'two' is not an integer"),
        (["--config", str(EXAMPLE), "--bogus"], "unrecognized arguments: --bogus"),
        (["--config", "/nonexistent/lb.toml"], "/nonexistent/lb.toml: cannot read"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("quicvoice-lb: error: ") and message in err
    assert err.count("\n") == 1


def test_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(EXAMPLE.read_text().replace('"127.0.0.1:4503"', '"127.0.0.1:99999"'))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "backends[2].address: port 99999 is out of range" in err
    assert err.count("\n") == 1


def test_the_installed_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(EXAMPLE.read_text().replace('listen = "127.0.0.1:4433"', "listen = 1"))
    result = subprocess.run(
        [sys.executable, "-m", "lb", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith('listen: must be a string "HOST:PORT"')
    assert "Traceback" not in result.stderr


def test_the_forwarder_imports_only_the_codec_and_the_standard_library() -> None:
    probe = (
        "import sys\n"
        "import lb.__main__, lb.forwarder, lb.router, lb.metrics\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "project = sorted(m for m in sys.modules if m.startswith(('quicvoice', 'lb')))\n"
        "third = sorted(t for t in tops - set(sys.stdlib_module_names) - {'quicvoice', 'lb'}"
        " if not t.startswith('_'))\n"
        "print(' '.join(third)); print(' '.join(project))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    third, project = result.stdout.splitlines()
    assert set(third.split()) <= {"cryptography"}
    assert all(
        name == "quicvoice"
        or name.startswith(
            (
                "quicvoice.quiclb",
                "quicvoice.errors",
                "quicvoice.version",
                "quicvoice.settings",
                "quicvoice.encapsulation",
                "quicvoice.healthprobe",
                "lb",
            )
        )
        for name in project.split()
    ), project


def test_encapsulation_is_import_light_for_backends() -> None:
    probe = (
        "import sys, quicvoice.encapsulation\n"
        "print(sorted(m for m in sys.modules if m.startswith('quicvoice')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    # The package root and the stdlib-only modules it takes: no aioquic, no session stack.
    loaded = set(result.stdout.strip()[1:-1].replace("'", "").split(", "))
    assert loaded <= {
        "quicvoice", "quicvoice.errors", "quicvoice.version", "quicvoice.encapsulation"
    }


def test_batch_turns_batched_io_on() -> None:
    from lb.__main__ import parse_arguments

    assert parse_arguments(["--config", str(EXAMPLE)]).batch is False
    assert parse_arguments(["--config", str(EXAMPLE), "--batch"]).batch is True
