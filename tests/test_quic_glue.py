"""The aioquic internals quicvoice.quic relies on: pinned version range, every name present."""

from __future__ import annotations

from aioquic import tls
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.recovery import QuicPacketRecovery
from aioquic.quic.stream import QuicStreamSender

from quicvoice import quic as glue
from quicvoice.certificates import generate_certificate
from quicvoice.quiclb import LoadBalancerConfig, QuicLbConnectionIdGenerator

OWNERS = {
    "QuicConnection": QuicConnection,
    "QuicStreamSender": QuicStreamSender,
    "H3Connection": H3Connection,
    "QuicPacketRecovery": QuicPacketRecovery,
    "Context": tls.Context,
}


def test_installed_aioquic_is_in_the_supported_range() -> None:
    glue.check_aioquic_version()
    low, high = glue.SUPPORTED_AIOQUIC
    assert low <= glue.aioquic_version() < high


def test_every_private_name_still_exists() -> None:
    certificate = generate_certificate()
    configuration = QuicConfiguration(is_client=False, connection_id_length=17)
    configuration.certificate = certificate.certificate
    configuration.private_key = certificate.private_key
    generator = QuicLbConnectionIdGenerator(
        b"\x00\x00\x00\x01", LoadBalancerConfig(0, 4, 12, bytes(16)), bytes(32)
    )
    connection = glue.QuicLbConnection(
        configuration=configuration,
        cid_generator=generator,
        original_destination_connection_id=bytes(8),
    )
    client = QuicConnection(configuration=QuicConfiguration(is_client=True))
    instances = {
        "QuicConnection": connection,
        "QuicStreamSender": QuicStreamSender(stream_id=0, writable=True),
        "H3Connection": H3Connection(client),
        "QuicPacketRecovery": connection._loss,
        "Context": tls.Context(is_client=True),
    }
    missing = [
        f"{owner}.{name}"
        for owner, names in glue.PRIVATE_NAMES.items()
        for name in names
        if not hasattr(instances[owner], name) and not hasattr(OWNERS[owner], name)
    ]
    assert not missing


def test_first_cid_and_reset_token_come_from_the_generator() -> None:
    certificate = generate_certificate()
    configuration = QuicConfiguration(is_client=False, connection_id_length=17)
    configuration.certificate = certificate.certificate
    configuration.private_key = certificate.private_key
    config = LoadBalancerConfig(0, 4, 12, bytes(16))
    generator = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x07", config, bytes(32))
    connection = glue.QuicLbConnection(
        configuration=configuration,
        cid_generator=generator,
        original_destination_connection_id=bytes(8),
    )
    assert config.decode(connection.host_cid) == b"\x00\x00\x00\x07"
    assert connection.host_cids() == [connection.host_cid]
    first = connection._host_cids[0]
    assert first.stateless_reset_token == generator.stateless_reset_token(connection.host_cid)
    assert connection._local_initial_source_connection_id == connection.host_cid
