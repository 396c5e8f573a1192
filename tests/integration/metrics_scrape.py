"""Scrape a backend's ``/metrics`` over real HTTP and parse it with Prometheus' own parser."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(address: tuple[str, int], path: str = "/metrics") -> tuple[int, str, str]:
    """GET ``path`` with urllib: status, Content-Type and body."""
    host, port = address
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and label set (Prometheus' parser)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(address: tuple[str, int]) -> Samples:
    """Scrape without blocking the event loop the backend runs on."""
    status, content_type, body = await asyncio.to_thread(fetch, address)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing one fails the test with the names that exist."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        names = sorted({n for n, _ in samples})
        raise AssertionError(f"no sample {name}{labels}; samples: {names}")
    return samples[key]


async def scrape_until(
    address: tuple[str, int],
    condition: Callable[[Samples], bool],
    timeout: float = 5.0,
    interval: float = 0.05,
) -> Samples:
    """Scrape until ``condition`` holds (a connection's close is seen after its draining
    period, 3 PTOs), or fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(address)
        if condition(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the metrics never met the condition")
        await asyncio.sleep(interval)
