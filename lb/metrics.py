"""Prometheus text metrics summed over the forwarder's processes, served over HTTP.

Each pump process writes a snapshot of its counters to a file in a private run directory
about once a second (``write_snapshot``: write then rename, so readers never see half a
file); the supervisor's HTTP thread sums the latest snapshots on every scrape. Counters of a
pump that restarts start again from zero, like any Prometheus counter after a restart.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from quicvoice.settings import Address

from .router import MetricSample

SNAPSHOT_SUFFIX = ".json"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HELP = {
    "quicvoice_lb_received_packets_total": "Datagrams received, by direction.",
    "quicvoice_lb_received_bytes_total": "Octets received, by direction.",
    "quicvoice_lb_routed_packets_total": "Client datagrams forwarded or answered, by rule.",
    "quicvoice_lb_dropped_packets_total": "Datagrams dropped, by direction and reason.",
    "quicvoice_lb_decode_failures_total": "DCIDs that decoded to no server ID, by reason.",
    "quicvoice_lb_backend_packets_total": "Datagrams to and from each backend.",
    "quicvoice_lb_backend_bytes_total": "QUIC octets to and from each backend.",
    "quicvoice_lb_config_reloads_total": "Configuration reloads (SIGHUP), by result.",
    "quicvoice_lb_pump_restarts_total": "Pump processes restarted after an unexpected exit.",
    "quicvoice_lb_workers": "Worker process pairs (--workers).",
    "quicvoice_lb_native_path": "1 when the pumps run on the native path, 0 on the Python path.",
    "quicvoice_lb_backend_up": "1 when the backend takes traffic, 0 when it is down.",
    "quicvoice_lb_backend_transitions_total": "Backend health changes, by backend and new state.",
}
GAUGES = frozenset({"quicvoice_lb_workers", "quicvoice_lb_native_path", "quicvoice_lb_backend_up"})


def write_snapshot(path: Path, samples: Iterable[MetricSample]) -> None:
    """Atomically replace ``path`` with ``samples`` as JSON."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(
        json.dumps([[name, list(labels), value] for name, labels, value in samples])
    )
    os.replace(temporary, path)


def read_snapshots(directory: Path) -> list[MetricSample]:
    """Return the samples of every snapshot in ``directory`` (unreadable ones are skipped)."""
    out: list[MetricSample] = []
    for path in sorted(directory.glob(f"*{SNAPSHOT_SUFFIX}")):
        try:
            entries = json.loads(path.read_text())
            for name, labels, value in entries:
                out.append((str(name), tuple((str(k), str(v)) for k, v in labels), int(value)))
        except (OSError, ValueError, TypeError):
            continue
    return out


def merge(samples: Iterable[MetricSample]) -> dict[str, dict[tuple[tuple[str, str], ...], int]]:
    """Sum samples with the same name and labels; group them by metric name."""
    merged: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}
    for name, labels, value in samples:
        series = merged.setdefault(name, {})
        series[labels] = series.get(labels, 0) + value
    return merged


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples: Iterable[MetricSample]) -> str:
    """Render samples (summed) in the Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for name, series in sorted(merge(samples).items()):
        lines.append(f"# HELP {name} {HELP.get(name, name)}")
        lines.append(f"# TYPE {name} {'gauge' if name in GAUGES else 'counter'}")
        for labels, value in sorted(series.items()):
            text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
            lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A tiny HTTP server in a daemon thread: ``GET /metrics`` returns ``render(collect())``."""

    def __init__(self, address: Address, collect: Callable[[], list[MetricSample]]) -> None:
        server_class = _IPv6Server if ":" in address[0] else _IPv4Server
        self._server = server_class(address, _handler_for(collect))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def address(self) -> Address:
        """The address the server is bound to (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


class _IPv4Server(ThreadingHTTPServer):
    daemon_threads = True


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


def _handler_for(collect: Callable[[], list[MetricSample]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render(collect()).encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # scrapes are not worth a log line

    return Handler
