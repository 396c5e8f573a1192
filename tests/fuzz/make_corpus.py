"""Write the seed corpora of the fuzz targets: real encodings, real CIDs, real QUIC Initials.

    .venv/bin/python -m tests.fuzz.make_corpus

Seeds are named ``seed-*`` and rewritten on every run (deterministic where the protocol allows:
QUIC packets carry fresh keys and random CIDs, so those files change from run to run); inputs
that campaigns added (libFuzzer names them by SHA-1) are left alone.
"""

from __future__ import annotations

from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.tls import SessionTicket

from quicvoice.encapsulation import wrap
from quicvoice.quic import QuicLbConnection, parse_header, peek_psk_identity
from quicvoice.quiclb import QuicLbConnectionIdGenerator
from quicvoice.session.messages import (
    Bye,
    Cancel,
    Error,
    Event,
    Hello,
    UplinkMode,
    Welcome,
    encode_message,
)
from quicvoice.session.transport import ALPN_VOICE
from quicvoice.session.wire import (
    MediaFrame,
    StreamKind,
    encode_datagram,
    encode_frame,
    encode_stream_header,
)
from quicvoice.store.tokens import ResumeTokenIssuer
from tests.session.pair import (
    CERTIFICATE,
    CLIENT_ADDR,
    LB_CONFIG,
    RESET_KEY,
    SERVER_ADDR,
    SERVER_ID,
)

from .targets import (
    FORWARDER_CONFIG,
    PSK_CID_LENGTH,
    QUICLB_CONFIGS,
    TARGETS,
    TOKEN_ISSUED_AT,
    TOKEN_KEYS,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
MESSAGES = [
    Hello(),
    Hello(codecs=("opus/48000", "L16/16000"), frame_ms=40, uplink=UplinkMode.REALTIME,
          resume_token=bytes(70)),
    Welcome(session_id="5f2a9c", codec="L16/16000", frame_ms=20, uplink=UplinkMode.RELIABLE,
            server_id="0a0b0c0d", resumed=True, resume_token=bytes(60)),
    Event(name="order.add", data={"item": "taro milk tea", "n": 2, "x": [1.5, None, True]}),
    Error(code=0x105, message="too many streams"),
    Cancel(turn_id=3),
    Bye(uplink_frames=399),
]  # fmt: skip
FRAMES = [MediaFrame(0, 0, bytes(16)), MediaFrame(7, 2240, b"\x01\x02" * 20)]


def _chunk(data: bytes) -> bytes:
    """The stateful targets' length-prefixed byte string."""
    if len(data) < 0x80:
        return bytes((len(data),)) + data
    assert len(data) < 0x8000
    return bytes((0x80 | len(data) >> 8, len(data) & 0xFF)) + data


def _stream(selector: int, data: bytes, fin: bool = False) -> bytes:
    """Operation: write ``data`` on the peer's stream number ``selector`` of the target's list."""
    return bytes((0x00, 0x00, selector)) + _chunk(data) + bytes((0 if fin else 1,))


def _datagram(data: bytes) -> bytes:
    return bytes((0x00, 0x03, 0x00, 0x01)) + _chunk(data)


PUMP = b"\xe3"


def _quic_samples() -> dict[str, bytes]:
    """A client's first Initial, one with a PSK (a resumption), and 1-RTT datagrams."""
    tickets: dict[bytes, SessionTicket] = {}
    generator = QuicLbConnectionIdGenerator(SERVER_ID, LB_CONFIG, RESET_KEY)
    server_configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN_VOICE], connection_id_length=generator.cid_length
    )
    server_configuration.certificate = CERTIFICATE.certificate
    server_configuration.private_key = CERTIFICATE.private_key
    client_tickets: list[SessionTicket] = []

    def client(ticket: SessionTicket | None = None) -> QuicConnection:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN_VOICE], verify_mode=0, session_ticket=ticket
        )
        return QuicConnection(
            configuration=configuration, session_ticket_handler=client_tickets.append
        )

    first = client()
    server = QuicLbConnection(
        configuration=server_configuration,
        cid_generator=generator,
        original_destination_connection_id=first.original_destination_connection_id,
        session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t),
        session_ticket_fetcher=tickets.get,
    )
    first.connect(SERVER_ADDR, now=0.0)
    samples: dict[str, bytes] = {}
    short: list[bytes] = []
    now = 0.0
    for _ in range(20):
        for data, _ in first.datagrams_to_send(now):
            samples.setdefault("initial", data)
            if not data[0] & 0x80:
                short.append(data)
            server.receive_datagram(data, CLIENT_ADDR, now)
        for data, _ in server.datagrams_to_send(now):
            samples.setdefault("server_initial", data)
            first.receive_datagram(data, SERVER_ADDR, now)
        now += 0.01
    first.send_stream_data(0, encode_message(Hello()))
    for data, _ in first.datagrams_to_send(now):
        short.append(data)
    samples["short"] = short[-1]
    assert client_tickets, "the server issued no session ticket"
    second = client(client_tickets[-1])
    second.connect(SERVER_ADDR, now=now)
    samples["initial_psk"] = second.datagrams_to_send(now)[0][0]
    assert peek_psk_identity(samples["initial_psk"], PSK_CID_LENGTH) is not None
    assert peek_psk_identity(samples["initial"], PSK_CID_LENGTH) is None
    return samples


def _initial_payload(datagram: bytes) -> bytes:
    """The decrypted frames of a client Initial, trailing PADDING removed."""
    header = parse_header(datagram, PSK_CID_LENGTH)
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=1)
    _, payload, _ = crypto.decrypt_packet(
        datagram[: header.packet_length], _payload_offset(datagram), 0
    )
    return payload.rstrip(b"\x00")


def _payload_offset(datagram: bytes) -> int:
    """Offset of the packet number in a long-header Initial (after the Length varint)."""
    position = 6 + datagram[5]
    position += 1 + datagram[position]  # SCID
    token_length, position = _varint(datagram, position)
    position += token_length
    _, position = _varint(datagram, position)  # Length
    return position


def _varint(data: bytes, position: int) -> tuple[int, int]:
    length = 1 << (data[position] >> 6)
    value = data[position] & 0x3F
    for index in range(position + 1, position + length):
        value = value << 8 | data[index]
    return value, position + length


def seeds() -> dict[str, dict[str, bytes]]:
    """Seed inputs by target, by name."""
    quic = _quic_samples()
    out: dict[str, dict[str, bytes]] = {name: {} for name in TARGETS}

    cids = out["quiclb_decode"]
    for config in QUICLB_CONFIGS:
        generator = QuicLbConnectionIdGenerator(
            bytes(range(1, 1 + config.server_id_len)), config, RESET_KEY
        )
        cids[f"cid-{config.config_id}-{config.algorithm.value}"] = generator.generate()
    cids["unroutable"] = QuicLbConnectionIdGenerator(SERVER_ID, None, RESET_KEY).generate()
    cids["server-cid"] = quic["short"][1:18]

    packets = out["lb_packet"]
    packets.update({name: quic[name] for name in ("initial", "server_initial", "short")})
    packets["version-negotiation"] = (
        b"\x80\x00\x00\x00\x00\x08" + bytes(8) + b"\x00\x00\x00\x00\x01"
    )

    encapsulated = out["lb_encapsulation"]
    encapsulated["ipv4"] = wrap(("198.51.100.7", 50000), b"\x40" + bytes(24))
    encapsulated["ipv6"] = wrap(("2001:db8::7", 443), b"\xc0" + bytes(30))

    router = out["lb_router"]
    down, healthy = FORWARDER_CONFIG.backends[2], FORWARDER_CONFIG.backends[0]
    single_pass = FORWARDER_CONFIG.configs[0]
    for backend, name in ((healthy, "healthy"), (down, "down")):
        cid = single_pass.encode(backend.server_id, bytes(12))
        router[f"short-{name}"] = b"\x00\x41" + cid + bytes(30)
    router["short-unknown"] = b"\x00\x41" + single_pass.encode(b"\xee" * 4, bytes(12)) + bytes(30)
    router["initial"] = b"\x01" + quic["initial"]
    router["encapsulated"] = b"\x00" + wrap(("198.51.100.7", 50000), quic["short"])

    native = out["lb_native"]
    native.update(router)
    four_pass = FORWARDER_CONFIG.configs[1]
    native["short-four-pass"] = (
        b"\x00\x41" + four_pass.encode(healthy.server_id, bytes(5)) + bytes(30)
    )
    native["short-no-port"] = (
        b"\x02\x41" + single_pass.encode(healthy.server_id, bytes(12)) + bytes(30)
    )
    native["encapsulated-from-backend"] = b"\x80" + wrap(("198.51.100.7", 50000), quic["short"])
    native["probe-answer"] = b"\x80" + wrap(("0.0.0.0", 9), bytes(30))
    native["cid-four-pass"] = QUICLB_CONFIGS[3].encode(bytes(range(10)), bytes(5)) + bytes(30)

    wire = out["wire"]
    wire["frames"] = b"\x05" + b"".join(encode_frame(f) for f in FRAMES)
    wire["turn-header"] = b"\x00" + encode_stream_header(StreamKind.TURN, 300)
    wire["datagram"] = encode_datagram(FRAMES[1])

    messages = out["messages"]
    for index, message in enumerate(MESSAGES):
        encoded = encode_message(message)
        messages[f"{message.TYPE}-{index}"] = encoded[1 << (encoded[0] >> 6) :]
    messages["stream"] = b"\x03" + b"".join(encode_message(m) for m in MESSAGES[3:])

    tokens = out["resume_token"]
    for key_id in TOKEN_KEYS:
        issuer = ResumeTokenIssuer(TOKEN_KEYS, key_id, 600)
        tokens[f"key-{key_id}"] = issuer.issue("5f2a9c0d11e2", TOKEN_ISSUED_AT)
    tokens["long-id"] = ResumeTokenIssuer(TOKEN_KEYS, 1, 600).issue("é" * 64, TOKEN_ISSUED_AT)

    psk = out["psk_identity"]
    psk["datagram"] = b"\x00" + quic["initial"]
    psk["datagram-psk"] = b"\x00" + quic["initial_psk"]
    psk["frames"] = b"\x01" + _initial_payload(quic["initial"])
    psk["frames-psk"] = b"\x01" + _initial_payload(quic["initial_psk"])

    hello = encode_message(Hello())
    realtime = encode_message(Hello(uplink=UplinkMode.REALTIME))
    uplink = encode_stream_header(StreamKind.UPLINK) + b"".join(encode_frame(f) for f in FRAMES)
    server = out["voice_server"]
    server["reliable-call"] = (
        _stream(0, hello) + PUMP + _stream(1, uplink) + PUMP
        + _stream(0, encode_message(MESSAGES[3]) + encode_message(MESSAGES[6]))
        + b"\xc0\x00\x00" + b"\xc0\x01\x00" + _chunk(bytes(32)) + PUMP
        + _stream(1, b"", fin=True) + PUMP
    )  # fmt: skip
    server["realtime-call"] = (
        _stream(0, realtime) + PUMP + _datagram(encode_datagram(FRAMES[0]))
        + _datagram(encode_datagram(FRAMES[1])) + PUMP
    )  # fmt: skip
    server["early-media"] = _stream(1, uplink * 3) + PUMP + _stream(0, hello) + PUMP
    server["stray-streams"] = b"".join(_stream(i, b"\x40") for i in (1, 2, 3, 4, 5)) + PUMP

    welcome = encode_message(MESSAGES[2])
    turn = encode_stream_header(StreamKind.TURN, 0) + b"".join(encode_frame(f) for f in FRAMES)
    client = out["voice_client"]
    client["reliable-call"] = (
        b"\x00" + _stream(0, welcome) + PUMP + _stream(1, turn) + PUMP
        + _stream(0, encode_message(Cancel(turn_id=0))) + _stream(1, b"", fin=True) + PUMP
    )  # fmt: skip
    client["turn-before-welcome"] = b"\x00" + _stream(1, turn) + PUMP + _stream(0, welcome) + PUMP
    return out


def main() -> None:
    total = 0
    for target, inputs in seeds().items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for name, data in inputs.items():
            TARGETS[target](data)  # every seed must pass its own target
            (directory / f"seed-{name}").write_bytes(data)
            total += len(data)
        print(f"{target}: {len(inputs)} seeds")
    print(f"{total} octets of seeds")


if __name__ == "__main__":
    main()
