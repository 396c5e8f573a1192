"""Headless Firefox for the browser tests, driven over Marionette (no geckodriver needed).

Debian packages ``firefox-esr`` but no geckodriver, and Selenium's Firefox driver needs one.
Firefox has Marionette built in: ``--marionette`` listens on ``marionette.port`` (set in the
fresh profile's ``user.js``), and its protocol is small: each message is ``LENGTH:JSON``, a
command ``[0, id, name, params]``, its answer ``[1, id, error, result]``. This speaks the few
WebDriver commands the tests use. Every process started here is ended by PID.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import descendants, free_port, kill_pids

#: Prefs of the throwaway profile: no network but loopback, nothing phoning home.
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "app.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "network.proxy.type": 0,
    "network.dns.disableIPv6": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
}
CONNECT_TIMEOUT = 30.0


def firefox_binary() -> str | None:
    """Debian's ``firefox-esr`` (or a ``firefox``), if installed."""
    return shutil.which("firefox-esr") or shutil.which("firefox")


def require_firefox() -> str:
    """The Firefox executable; skip the calling test when there is none."""
    binary = firefox_binary()
    if binary is None:
        pytest.skip("needs Debian firefox-esr (apt-get install firefox-esr)")
    return binary


class MarionetteError(Exception):
    """A WebDriver command failed in the browser."""


class Marionette:
    """A Marionette connection: ``call(command, params)`` returns the command's result."""

    def __init__(self, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._socket = socket.create_connection(("127.0.0.1", port), timeout=120)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._buffer = b""
        self._id = 0
        greeting = self._read()
        assert greeting.get("marionetteProtocol") == 3, greeting

    def _read(self) -> Any:
        while b":" not in self._buffer:
            self._receive()
        size, _, rest = self._buffer.partition(b":")
        length = int(size)
        self._buffer = rest
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return json.loads(body)

    def _receive(self) -> None:
        chunk = self._socket.recv(65536)
        if not chunk:
            raise ConnectionError("Marionette closed the connection")
        self._buffer += chunk

    def call(self, command: str, params: dict[str, Any]) -> Any:
        self._id += 1
        body = json.dumps([0, self._id, command, params]).encode()
        self._socket.sendall(str(len(body)).encode() + b":" + body)
        for _ in range(1000):
            message = self._read()
            if message[0] == 1 and message[1] == self._id:
                if message[2]:
                    raise MarionetteError(message[2].get("message", message[2]))
                return message[3]
        raise MarionetteError(f"no answer to {command}")

    def execute_async(self, script: str, *args: Any, timeout: float = 30.0) -> Any:
        """Run ``script`` (it calls ``arguments[arguments.length - 1]`` with its result)."""
        result = self.call(
            "WebDriver:ExecuteAsyncScript",
            {"script": script, "args": list(args), "scriptTimeout": int(timeout * 1000)},
        )
        return result["value"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()


@contextlib.contextmanager
def firefox() -> Iterator[tuple[Marionette, str]]:
    """A headless Firefox with a fresh profile; yields (Marionette, browser version)."""
    binary = require_firefox()
    profile = Path(tempfile.mkdtemp(prefix="qv-firefox-"))
    port = free_port(socket.SOCK_STREAM)
    prefs = {**PREFS, "marionette.port": port}
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
    )
    with open(profile / "firefox.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    marionette: Marionette | None = None
    try:
        marionette = Marionette(port)
        session = marionette.call("WebDriver:NewSession", {"capabilities": {}})
        yield marionette, str(session["capabilities"]["browserVersion"])
    finally:
        children = descendants(process.pid)
        if marionette is not None:
            with contextlib.suppress(Exception):
                marionette.call("Marionette:Quit", {"flags": ["eForceQuit"]})
            marionette.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        kill_pids(children + descendants(process.pid))
        shutil.rmtree(profile, ignore_errors=True)
