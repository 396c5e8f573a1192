"""TLS session tickets: explicit encoding, garbage refused, and a real 0-RTT resumption on a
second backend that got the ticket through the shared store."""

from __future__ import annotations

import asyncio
import datetime

import msgpack
import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.tls import CipherSuite, SessionTicket
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.certificates import generate_certificate
from quicvoice.errors import StoreError
from quicvoice.store import MemoryStore
from quicvoice.store.tickets import TicketCache, decode_ticket, encode_ticket

CERTIFICATE = generate_certificate()
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def a_ticket(label: bytes = b"L" * 64, **changes: object) -> SessionTicket:
    fields: dict[str, object] = dict(
        age_add=123456,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=NOW + datetime.timedelta(days=1),
        not_valid_before=NOW,
        resumption_secret=bytes(range(32)),
        server_name="localhost",
        ticket=label,
        max_early_data_size=0xFFFFFFFF,
        other_extensions=[(0x39, b"\x01\x02")],
    )
    fields.update(changes)
    return SessionTicket(**fields)  # type: ignore[arg-type]


def test_round_trip() -> None:
    ticket = a_ticket()
    assert decode_ticket(encode_ticket(ticket), ticket.ticket) == ticket


def test_a_ticket_under_another_label_is_refused() -> None:
    with pytest.raises(StoreError, match="another label"):
        decode_ticket(encode_ticket(a_ticket()), b"other")


@pytest.mark.parametrize(
    "index, value",
    [(0, 2), (2, -1), (2, 2**32), (3, 0x00FF), (3, 0x9999), (4, -5), (5, 2**64 - 1),
     (6, b""), (6, bytes(65)), (7, 5), (8, "x"), (9, [[1]]), (9, [[2**16, b""]]), (9, "x")],
)  # fmt: skip
def test_out_of_bounds_fields_are_refused(index: int, value: object) -> None:
    fields = msgpack.unpackb(encode_ticket(a_ticket()), raw=False)
    fields[index] = value
    with pytest.raises(StoreError):
        decode_ticket(msgpack.packb(fields, use_bin_type=True), b"L" * 64)


@settings(max_examples=300)
@given(blob=st.binary(max_size=300))
def test_garbage_is_a_store_error(blob: bytes) -> None:
    with pytest.raises(StoreError):
        decode_ticket(blob, b"L" * 64)


def test_cache_is_single_use_and_shares_through_the_store() -> None:
    async def main() -> None:
        store = MemoryStore()
        a, b, c = TicketCache(store), TicketCache(store), TicketCache(store)
        ticket = a_ticket()
        a.handle(ticket)
        await a.flush()
        assert await b.prefetch(ticket.ticket)
        assert not await c.prefetch(ticket.ticket)  # taken from the store: one backend only
        assert b.fetch(ticket.ticket) == ticket
        assert b.fetch(ticket.ticket) is None  # used once
        assert a.fetch(ticket.ticket) == ticket  # the issuer's own copy (documented limit)
        assert b.statistics().prefetched == 1 and b.statistics().misses == 1
        await a.aclose()
        await b.aclose()

    asyncio.run(main())


def test_cache_survives_store_failures_and_garbage() -> None:
    class Broken(MemoryStore):
        async def put_ticket(self, label: bytes, ticket: bytes, ttl: float) -> None:
            raise StoreError("down")

        async def take_ticket(self, label: bytes) -> bytes | None:
            return b"\xc1garbage"

    async def main() -> None:
        cache = TicketCache(Broken(), max_queued=2)
        for i in range(3):
            cache.handle(a_ticket(label=bytes([i]) * 64))
        await asyncio.sleep(0.01)
        await cache.flush()
        stats = cache.statistics()
        assert stats.store_errors >= 1 and stats.queued == 0
        assert not await cache.prefetch(b"Z" * 64)
        assert cache.statistics().corrupt == 1
        assert not await cache.prefetch(b"")
        expired = a_ticket(label=b"E" * 64, not_valid_after=NOW - datetime.timedelta(seconds=1),
                           not_valid_before=NOW - datetime.timedelta(days=1))  # fmt: skip
        cache.handle(expired)
        assert cache.fetch(b"E" * 64) is None

    asyncio.run(main())


def test_cache_without_a_loop_queues_until_flushed() -> None:
    store = MemoryStore()
    cache = TicketCache(store, max_queued=2)
    for i in range(3):
        cache.handle(a_ticket(label=bytes([i]) * 64))
    stats = cache.statistics()
    assert stats.queued == 2 and stats.dropped == 1 and stats.issued == 3
    asyncio.run(cache.flush())
    assert asyncio.run(store.take_ticket(b"\x02" * 64)) is not None


def pump(client: QuicConnection, server: QuicConnection, now: float) -> None:
    for _ in range(10):
        moved = False
        for data, _addr in client.datagrams_to_send(now):
            server.receive_datagram(data, ("127.0.0.1", 4433), now)
            moved = True
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, ("127.0.0.1", 4433), now)
            moved = True
        if not moved:
            return


def events(connection: QuicConnection) -> list[QuicEvent]:
    found = []
    while (event := connection.next_event()) is not None:
        found.append(event)
    return found


def server_connection(cache: TicketCache, original_dcid: bytes) -> QuicConnection:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["qv-test"])
    configuration.certificate = CERTIFICATE.certificate
    configuration.private_key = CERTIFICATE.private_key
    return QuicConnection(
        configuration=configuration,
        original_destination_connection_id=original_dcid,
        session_ticket_fetcher=cache.fetch,
        session_ticket_handler=cache.handle,
    )


def test_zero_rtt_on_another_backend_through_the_store() -> None:
    async def main() -> None:
        store = MemoryStore()
        backend_a, backend_b = TicketCache(store), TicketCache(store)
        client_tickets: list[SessionTicket] = []

        config = QuicConfiguration(is_client=True, alpn_protocols=["qv-test"], verify_mode=0)
        client = QuicConnection(configuration=config, session_ticket_handler=client_tickets.append)
        server = server_connection(backend_a, client.original_destination_connection_id)
        client.connect(("127.0.0.1", 4433), now=0.0)
        pump(client, server, 0.0)
        pump(client, server, 0.01)  # the ticket follows the handshake
        assert client_tickets and backend_a.statistics().issued == 1
        await backend_a.flush()

        # Backend A is gone; the client reconnects, the forwarder picks backend B.
        config2 = QuicConfiguration(is_client=True, alpn_protocols=["qv-test"], verify_mode=0)
        config2.session_ticket = client_tickets[-1]
        client2 = QuicConnection(configuration=config2)
        server2 = server_connection(backend_b, client2.original_destination_connection_id)
        # The shell read the PSK identity from the Initial and prefetched it before aioquic.
        assert await backend_b.prefetch(client_tickets[-1].ticket)
        client2.connect(("127.0.0.1", 4433), now=1.0)
        client2.send_stream_data(0, b"first audio, in 0-RTT")
        pump(client2, server2, 1.0)
        found = events(server2)
        done = [e for e in found if isinstance(e, HandshakeCompleted)]
        assert done and done[0].session_resumed and done[0].early_data_accepted
        data = b"".join(e.data for e in found if isinstance(e, StreamDataReceived))
        assert data == b"first audio, in 0-RTT"
        assert backend_b.statistics().hits == 1

        # The same ticket again, on a third backend: the store gave it out once, so that backend
        # misses and the client falls back to a full handshake (no replayed 0-RTT accepted).
        backend_c = TicketCache(store)
        assert not await backend_c.prefetch(client_tickets[-1].ticket)
        client3 = QuicConnection(configuration=config2)
        server3 = server_connection(backend_c, client3.original_destination_connection_id)
        client3.connect(("127.0.0.1", 4433), now=2.0)
        client3.send_stream_data(0, b"replayed")
        pump(client3, server3, 2.0)
        done = [e for e in events(server3) if isinstance(e, HandshakeCompleted)]
        assert done and not done[0].session_resumed and not done[0].early_data_accepted
        assert backend_c.statistics().misses == 1

    asyncio.run(main())
