"""Shared pieces of the browser tests: headless Chromium via Selenium, an event loop in a thread,
test speech for the fake microphone.

Chromium is the Debian ``chromium`` package driven by ``chromium-driver``; the tests skip when
either (or Selenium) is missing. Every process started here is ended by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

T = TypeVar("T")

#: Chromium flags that keep it off the network (loopback only) and quiet.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    # No name resolves to anything: only IP literals (127.0.0.1) can be reached.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
QUIT_TIMEOUT = 10.0


def chromium_binary() -> str | None:
    """The Chromium executable itself (not Debian's shell wrapper), if installed."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_browser() -> None:
    """Skip the calling test unless Selenium, Chromium and chromedriver are installed."""
    pytest.importorskip("selenium")
    if chromium_binary() is None or shutil.which("chromedriver") is None:
        pytest.skip("needs Debian chromium and chromium-driver (scripts/test installs them)")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A free loopback port of the given socket type."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid``."""
    tree = _children()
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each PID that is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, a process this test started (and its children)."""
    if process.poll() is not None:
        return
    children = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
    kill_pids(children)


@contextlib.contextmanager
def chromium(*extra_flags: str, script_timeout: float = 20.0) -> Iterator[Any]:
    """A headless Chromium under chromedriver; both are killed by PID when the block ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = chromium_binary()
    assert binary is not None
    profile = tempfile.mkdtemp(prefix="qv-chromium-")
    options = Options()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver_pid = service.process.pid if service.process is not None else None
    browser_pids = descendants(driver_pid) if driver_pid is not None else []
    try:
        driver.set_script_timeout(script_timeout)
        driver.set_page_load_timeout(15)
        yield driver
    finally:
        if driver_pid is not None:
            browser_pids = sorted(set(browser_pids) | set(descendants(driver_pid)))
        quitter = threading.Thread(target=driver.quit, daemon=True)
        quitter.start()
        quitter.join(QUIT_TIMEOUT)
        kill_pids(browser_pids + ([driver_pid] if driver_pid is not None else []))
        shutil.rmtree(profile, ignore_errors=True)


class LoopThread:
    """An asyncio event loop running in a daemon thread, for servers under a blocking test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what still runs on the loop, then stop the loop and its thread."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def _interpolate_by_two(samples: np.ndarray) -> np.ndarray:
    """Double the sample rate: zero-stuff, then a Kaiser-windowed half-band sinc low-pass."""
    half = 64
    n = np.arange(-half, half + 1)
    taps = np.sinc(n / 2) * np.kaiser(2 * half + 1, 9.0)
    stuffed = np.zeros(2 * len(samples))
    stuffed[::2] = samples
    return np.convolve(stuffed, taps, mode="same")


def make_speech_wav(path: Path, text: str, *, seconds: float = 4.0) -> Path:
    """Speak ``text`` with espeak-ng (22.05 kHz), then write it as 44.1 kHz mono 16-bit WAV.

    The speech is looped to ``seconds`` so the fake microphone never runs dry mid-test.
    """
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("needs espeak-ng")
    raw = path.with_suffix(".22k.wav")
    subprocess.run([espeak, "-w", str(raw), text], check=True, timeout=30)
    with wave.open(str(raw)) as source:
        assert source.getframerate() == 22050 and source.getsampwidth() == 2
        speech = np.frombuffer(source.readframes(source.getnframes()), "<i2").astype(np.float64)
    raw.unlink()
    pcm = _interpolate_by_two(speech)
    repeats = int(np.ceil(seconds * 44100 / len(pcm)))
    pcm = np.tile(pcm, repeats)[: int(seconds * 44100)]
    with wave.open(str(path), "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(2)
        target.setframerate(44100)
        target.writeframes(np.clip(np.round(pcm), -32768, 32767).astype("<i2").tobytes())
    return path


def wait_for(condition: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll ``condition()`` until it returns something true; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
