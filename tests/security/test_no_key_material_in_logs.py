"""No configured secret reaches a log line or the ``repr``/``str`` of a configuration object:
the QUIC-LB key, the stateless-reset key, the resume-token key, the TLS private key (PEM),
in hex (either case), base64, raw and ``repr`` forms.

A forwarder process (``log_level = "debug"``, its stderr captured) and three backends (Python
logging at DEBUG for every logger, aioquic's included) share one file; calls go through the
VIP, migrate, take an order, present a forged resume token; the forwarder reloads and stops.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from lb.config import load_config
from lb.router import Router
from quicvoice.asyncio.client import connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.certificates import generate_certificate
from quicvoice.errors import ConfigurationError
from quicvoice.quiclb import QuicLbConnectionIdGenerator
from quicvoice.session.messages import Hello
from quicvoice.store import StoreConfig
from tests.integration.deployment import KEY, Deployment, backends

from .raw import FRAME

pytestmark = pytest.mark.integration
RESUME_KEY = bytes(range(100, 148))
RESET_KEY = bytes(range(32))  # the Deployment's reset_key


def _forms(secret: bytes) -> list[str]:
    """The ways a secret could show up in text."""
    forms = [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()]
    forms += [repr(secret)[2:-1], secret.decode("latin-1")]
    return [form for form in forms if len(form) >= 16]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.args!r}")
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


@pytest.fixture
def secret_deployment(tmp_path: Path) -> tuple[Deployment, list[tuple[str, str]]]:
    certificate = generate_certificate()
    (tmp_path / "cert.pem").write_bytes(certificate.certificate_pem())
    (tmp_path / "key.pem").write_bytes(certificate.private_key_pem())
    deployment = Deployment(tmp_path)
    text = deployment.path.read_text()
    deployment.path.write_text(
        'log_level = "debug"\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'
        + text
        + f'\n[session]\nresume_key = "{RESUME_KEY.hex()}"\n'
    )
    pem = certificate.private_key_pem().decode()
    der = certificate.private_key.private_numbers().private_value.to_bytes(32, "big")
    needles = [("QUIC-LB key", form) for form in _forms(bytes.fromhex(KEY))]
    needles += [("reset key", form) for form in _forms(RESET_KEY)]
    needles += [("resume key", form) for form in _forms(RESUME_KEY)]
    needles += [("TLS private scalar", form) for form in _forms(der)]
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    needles += [("TLS key PEM", line) for line in body if len(line) >= 16]
    return deployment, needles


def _assert_clean(text: str, needles: list[tuple[str, str]], where: str) -> None:
    for name, needle in needles:
        assert needle not in text, f"{name} found in {where}"


def test_a_deployment_logs_no_key_material(
    secret_deployment: tuple[Deployment, list[tuple[str, str]]], tmp_path: Path
) -> None:
    deployment, needles = secret_deployment
    stderr_path = tmp_path / "forwarder.stderr"
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)

    async def scenario() -> None:
        async with backends(deployment) as servers:
            host, port = deployment.vip
            async with connect(host, port, verify=False, local_address="127.0.0.2") as call:
                for _ in range(10):
                    call.send_audio(FRAME)
                    await asyncio.sleep(0.01)
                await call.migrate("127.0.0.3")
                call.send_event("order.add", {"item": "taro milk tea"})
                await call.wait_event("order.cart")
                call.end_audio()
                assert call.session is not None and call.session.resume_token is not None
                forged = bytes(call.session.resume_token[:-1]) + b"\x00"
                with pytest.raises(ConnectionError):
                    hello = Hello(resume_token=forged)
                    async with connect(host, port, verify=False, hello=hello, reconnect=False):
                        pass
            _assert_clean(repr(servers) + str(servers), needles, "repr(servers)")
            for server in servers.values():
                for value in (server.config, server.quic_configuration, server.resume_tokens,
                              server.cid_generator, server.store):  # fmt: skip
                    _assert_clean(repr(value) + str(value), needles, f"repr({value!r:.40})")

    try:
        with stderr_path.open("wb") as stderr:
            deployment.process = subprocess.Popen(
                [sys.executable, "-m", "lb", "--config", str(deployment.path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            deployment.wait_for_metrics()
            asyncio.run(asyncio.wait_for(scenario(), 60))
            deployment.reload()
            deployment.wait_for_metrics()
            deployment.stop()
            deployment.process = None
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        deployment.stop()
    forwarder_log = stderr_path.read_text()
    assert '"level":"debug"' in forwarder_log or '"event":"pump_started"' in forwarder_log
    assert capture.lines, "nothing was logged: the capture is broken"
    _assert_clean(forwarder_log, needles, "the forwarder's stderr")
    _assert_clean("\n".join(capture.lines), needles, "the backends' logs")
    print(f"\n{len(forwarder_log.splitlines())} forwarder lines, {len(capture.lines)} records")


def test_configuration_objects_do_not_show_their_keys(
    secret_deployment: tuple[Deployment, list[tuple[str, str]]],
) -> None:
    deployment, needles = secret_deployment
    forwarder = load_config(deployment.path)
    backend = BackendConfig.load(deployment.path, server_id=bytes.fromhex("0a000001"))
    objects: list[object] = [
        forwarder,
        backend,
        *forwarder.configs,
        *backend.configs,
        Router(forwarder),
        QuicLbConnectionIdGenerator(backend.server_id, backend.configs[0], backend.reset_key),
        StoreConfig.from_url("redis://:s3cret-password-0123456789@127.0.0.1:6379/0"),
    ]
    needles = [*needles, ("Redis password", "s3cret-password-0123456789")]
    for value in objects:
        _assert_clean(repr(value) + str(value), needles, f"repr of {type(value).__name__}")


@pytest.mark.parametrize("where", ["forwarder", "backend"])
def test_a_malformed_key_is_not_echoed_in_the_error(tmp_path: Path, where: str) -> None:
    almost = bytes.fromhex(KEY).hex() * 2 + "g"  # a 64-digit reset key with a stray digit
    resume = RESUME_KEY.hex() + "z"
    path = tmp_path / "bad.toml"
    path.write_text(
        f'listen = "127.0.0.1:4433"\nbackend_listen = "127.0.0.1:4434"\nreset_key = "{almost}"\n'
        f'[session]\nresume_key = "{resume}"\n'
        "[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\n"
        '[[backends]]\nserver_id = "0a000001"\naddress = "127.0.0.1:5001"\n'
    )
    with pytest.raises(ConfigurationError) as refused:
        if where == "forwarder":
            load_config(path)
        else:
            BackendConfig.load(path, server_id=bytes.fromhex("0a000001"))
    message = str(refused.value)
    assert almost[:32] not in message and resume[:32] not in message, message
