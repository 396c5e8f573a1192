"""Fuzz targets: one function per decoder, ``target(data: bytes) -> None``.

A target returns normally for every input the code under test handles as documented (a value,
or the documented exception, caught here). Anything else escapes: an undocumented exception,
or an ``AssertionError`` from an invariant checked below. The same functions run under atheris
(``python -m tests.fuzz.run``), in the bounded CI run and in the corpus replay
(``tests/fuzz/test_fuzz_ci.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from lb import native_path
from lb.config import Backend, ForwarderConfig
from lb.health import PROBE_REPLY_HEADER
from lb.packet import LongHeader, Malformed, ShortHeader, parse
from lb.python_path import port_and_address
from lb.router import Drop, Forward, Reply, Router, Send
from quicvoice.encapsulation import EncapsulationError, unwrap, wrap
from quicvoice.errors import ProtocolError
from quicvoice.quic import peek_psk_identity
from quicvoice.quiclb import LoadBalancerConfig, LoadBalancerDecoder, Unroutable
from quicvoice.session.messages import (
    MAX_MESSAGE_LEN,
    Message,
    MessageReader,
    decode_message,
    encode_message,
)
from quicvoice.session.wire import (
    FRAME_HEADER_LEN,
    MAX_FRAME_LEN,
    FrameReader,
    StreamHeaderReader,
    decode_datagram,
    encode_datagram,
    encode_frame,
)
from quicvoice.store.tokens import DOMAIN, TAG_LEN, ResumeRefused, ResumeTokenIssuer

from .stateful import fuzz_voice_client, fuzz_voice_server

Target = Callable[[bytes], None]

# -- QUIC-LB ----------------------------------------------------------------------------------

#: Every algorithm and both length encodings, one config per config ID (a forwarder may hold
#: up to seven during a rotation).
QUICLB_CONFIGS = (
    LoadBalancerConfig(0, 4, 12, bytes(range(16))),  # single pass, length encoded
    LoadBalancerConfig(1, 4, 8),  # plaintext
    LoadBalancerConfig(2, 3, 4, bytes(range(16, 32))),  # four pass, odd block (3 passes)
    LoadBalancerConfig(3, 10, 5, bytes(range(32, 48))),  # four pass, 4 passes
    LoadBalancerConfig(4, 2, 14, bytes(range(48, 64)), encode_length=False),  # single pass
    LoadBalancerConfig(5, 1, 4, encode_length=False),  # plaintext, shortest CID
    LoadBalancerConfig(6, 9, 10, bytes(range(64, 80))),  # four pass, longest block (19)
)
QUICLB_DECODER = LoadBalancerDecoder(QUICLB_CONFIGS)


def fuzz_quiclb_decode(data: bytes) -> None:
    """``LoadBalancerDecoder.decode`` and every ``LoadBalancerConfig.decode``: never raise;
    a decoded CID re-encodes to the same block (the transforms are permutations)."""
    cid = data[:20]
    result = QUICLB_DECODER.decode(cid)
    if isinstance(result, Unroutable):
        assert result is not Unroutable.EMPTY or not cid
    else:
        config = QUICLB_DECODER.config_for(cid)
        assert config is not None and len(result) == config.server_id_len
    for config in QUICLB_CONFIGS:
        server_id = config.decode(data)
        nonce = config.decode_nonce(data)
        if server_id is None:
            assert nonce is None
            assert len(data) < config.cid_len or data[0] >> 5 != config.config_id
            continue
        assert nonce is not None and len(server_id) == config.server_id_len
        again = config.encode(server_id, nonce, random_bits=data[0])
        assert again[1 : config.cid_len] == data[1 : config.cid_len], config
        assert again[0] >> 5 == config.config_id


# -- forwarder ---------------------------------------------------------------------------------

FORWARDER_CONFIG = ForwarderConfig(
    listen=("127.0.0.1", 4433),
    backend_listen=("127.0.0.1", 4434),
    configs=(QUICLB_CONFIGS[0], LoadBalancerConfig(2, 4, 5, bytes(range(16, 32)))),
    backends=(
        Backend(bytes.fromhex("0a000001"), ("127.0.0.1", 5001)),
        Backend(bytes.fromhex("0a000002"), ("127.0.0.1", 5002)),
        Backend(bytes.fromhex("0a000003"), ("127.0.0.1", 5003), down=True),
        Backend(bytes.fromhex("0b000001"), ("10.0.0.4", 5004)),
        Backend(bytes.fromhex("0b000002"), ("127.0.0.2", 5005), down=True),
    ),
    reset_key=bytes(range(32)),
)
#: Deterministic "randomness" for stateless resets, so a crash reproduces.
ROUTER = Router(FORWARDER_CONFIG, random=lambda n: hashlib.shake_128(b"qv").digest(n))
BACKEND_ADDRESSES = {b.address for b in FORWARDER_CONFIG.backends}
CLIENTS = (("198.51.100.7", 50000), ("2001:db8::7", 443), ("127.0.0.1", 5001))


def fuzz_lb_packet(data: bytes) -> None:
    """``lb.packet.parse`` never raises and reports the header as it is on the wire."""
    parsed = parse(data)
    if isinstance(parsed, Malformed):
        return
    if isinstance(parsed, ShortHeader):
        assert not data[0] & 0x80 and parsed.dcid_prefix == data[1:21]
        return
    assert isinstance(parsed, LongHeader) and data[0] & 0x80
    assert parsed.version == int.from_bytes(data[1:5], "big")
    assert parsed.dcid == data[6 : 6 + data[5]] and len(parsed.dcid) == data[5]


def fuzz_lb_encapsulation(data: bytes) -> None:
    """``unwrap`` raises only ``EncapsulationError``; what it accepts re-wraps to the input."""
    try:
        address, payload = unwrap(data)
    except EncapsulationError:
        return
    assert wrap(address, payload) == data


def fuzz_lb_router(data: bytes) -> None:
    """Both directions of the router: only documented decisions, and never amplification."""
    if not data:
        ROUTER.route_from_client(data, CLIENTS[0])
        return
    selector, datagram = data[0], data[1:]
    client = CLIENTS[selector % len(CLIENTS)]
    decision = ROUTER.route_from_client(datagram, client)
    if isinstance(decision, Forward):
        assert decision.address in BACKEND_ADDRESSES
        assert decision.datagram == wrap(client, datagram)
    elif isinstance(decision, Reply):
        # A stateless reset: to the sender only, strictly smaller, at least 21 octets.
        assert decision.address == client
        assert 21 <= len(decision.datagram) < len(datagram)
        assert not decision.datagram[0] & 0x80 and decision.datagram[0] & 0x40
    else:
        assert isinstance(decision, Drop)
    source = sorted(BACKEND_ADDRESSES)[selector % len(BACKEND_ADDRESSES)]
    sources = (source, ("127.0.0.1", 4433), ("203.0.113.9", 5001))
    for index, sender in enumerate(sources):
        reply = ROUTER.route_from_backend(datagram, sender)
        if index:
            assert isinstance(reply, Drop), "the forwarder relayed for a non-backend"
        elif isinstance(reply, Send):
            assert 0 < len(reply.datagram) < len(datagram)
        else:
            assert isinstance(reply, Drop)


#: The native path's tables of a router of its own (its counters are its own), and of every
#: QUICLB_CONFIGS configuration for the decoder; None where the extension is not built.
NATIVE_ROUTER = Router(FORWARDER_CONFIG, random=lambda n: bytes(n))
NATIVE_TABLES = native_path.NativeTables(NATIVE_ROUTER).tables if native_path.AVAILABLE else None
NATIVE_DECODER = (
    native_path.native.Tables(
        [
            native_path.config_spec(QUICLB_DECODER.config_for(bytes((bits << 5,))))
            for bits in range(8)
        ],
        [],
        [],
        bytes(6),
    )
    if native_path.native is not None and native_path.AESNI
    else None
)
NATIVE_CLIENTS = (("198.51.100.7", 50000), ("127.0.0.1", 5001), ("10.0.0.1", 0))


def fuzz_lb_native(data: bytes) -> None:
    """lb._native's decisions against the Router's on the same bytes (a differential target):
    the fast path takes a client datagram exactly when the Router forwards it by server ID as
    a short header from a client with a port, and a backend's exactly when the Router sends on
    an IPv4 header that is no probe answer; its decoder reads every CID as the codec does."""
    if NATIVE_TABLES is None:
        return  # no extension here: the Python path is the forwarder
    if NATIVE_DECODER is not None:
        cid = data[:20]
        expected = QUICLB_DECODER.decode(cid)
        assert NATIVE_DECODER.decode(cid) == (expected if isinstance(expected, bytes) else None)
    selector, datagram = (data[0], data[1:]) if data else (0, b"")
    client = NATIVE_CLIENTS[selector % len(NATIVE_CLIENTS)]
    counters = NATIVE_ROUTER.counters
    by_server_id = counters.routed_server_id
    try:
        decision: Forward | Reply | Drop | None = NATIVE_ROUTER.route_from_client(datagram, client)
    except EncapsulationError:
        decision = None  # port 0: not encapsulable
    index = NATIVE_TABLES.uplink(datagram, client[1])
    fast = (
        type(decision) is Forward
        and counters.routed_server_id > by_server_id
        and not datagram[0] & 0x80
    )
    if fast and native_path.AESNI:  # (without AES-NI, AES configurations are Python's)
        assert decision is not None
        live = list(NATIVE_ROUTER.fast_uplink.values())
        assert index >= 0 and live[index].address == decision.address, index
    else:
        assert index == -1, index
    sources = list(NATIVE_ROUTER.fast_downlink)
    source = sources[selector % len(sources)] if selector & 0x80 else ("127.0.0.1", 4433)
    reply = NATIVE_ROUTER.route_from_backend(datagram, source)
    index = NATIVE_TABLES.downlink(datagram, port_and_address(source))
    if type(reply) is Send and datagram[1] == 4 and datagram[:8] != PROBE_REPLY_HEADER:
        assert sources[index] == source, index
    else:
        assert index == -1, index


# -- voice protocol ---------------------------------------------------------------------------


def _splits(data: bytes) -> list[bytes]:
    """Cut ``data`` into pieces; the first octet chooses where (stream data arrives in bits)."""
    if not data:
        return [b""]
    step = data[0] % 17 + 1
    body = data[1:]
    return [body[i : i + step] for i in range(0, len(body), step)] or [b""]


def fuzz_wire(data: bytes) -> None:
    """``FrameReader``, ``StreamHeaderReader`` and ``decode_datagram``: ``ProtocolError`` only;
    frames survive a re-encode/decode round trip; the reader buffers at most one frame."""
    pieces = _splits(data)
    reader = FrameReader()
    frames = []
    try:
        for index, piece in enumerate(pieces):
            frames += reader.feed(piece, end_stream=index == len(pieces) - 1)
            assert reader.buffered <= MAX_FRAME_LEN + 8
    except ProtocolError:
        pass
    else:
        # Length prefixes may be non-minimal varints (RFC 9000 §16): compare frames, not octets.
        encoded = b"".join(encode_frame(frame) for frame in frames)
        assert len(encoded) <= max(0, len(data) - 1)
        assert FrameReader().feed(encoded, end_stream=True) == frames
    header = StreamHeaderReader()
    try:
        for piece in pieces:
            rest = header.feed(piece)
            if rest is not None:
                assert header.kind is not None
                break
    except ProtocolError:
        pass
    try:
        kind, frame = decode_datagram(data)
    except ProtocolError:
        return
    assert len(data) >= 1 + FRAME_HEADER_LEN
    assert encode_datagram(frame, kind) == data


def _same_message(first: Message, second: Message) -> None:
    assert type(first) is type(second)
    assert repr(first) == repr(second), (first, second)


def fuzz_messages(data: bytes) -> None:
    """``decode_message`` and ``MessageReader``: ``ProtocolError`` only, and every decoded
    message survives a re-encode/decode round trip unchanged."""
    try:
        message = decode_message(data)
    except ProtocolError:
        pass
    else:
        try:
            encoded = encode_message(message)
        except ValueError:
            # msgpack float32 values come back as float64: a message near the limit can grow.
            assert len(data) > MAX_MESSAGE_LEN // 2
        else:
            prefix = 1 << (encoded[0] >> 6)
            _same_message(message, decode_message(encoded[prefix:]))
    reader = MessageReader()
    pieces = _splits(data)
    try:
        for index, piece in enumerate(pieces):
            reader.feed(piece, end_stream=index == len(pieces) - 1)
            assert reader.buffered <= MAX_MESSAGE_LEN + 8
    except ProtocolError:
        pass


# -- resume tokens and TLS --------------------------------------------------------------------

TOKEN_KEYS = {1: bytes(range(32)), 7: bytes(range(100, 148))}
TOKEN_ISSUER = ResumeTokenIssuer(TOKEN_KEYS, 1, 600)
#: Tokens in the corpus are issued at this time; the target verifies a minute later.
TOKEN_ISSUED_AT = 1_700_000_000.0
TOKEN_NOW = TOKEN_ISSUED_AT + 60


def fuzz_resume_token(data: bytes) -> None:
    """``verify`` raises only ``ResumeRefused``; an accepted token is genuine (checked here
    independently) and names the session its body says."""
    try:
        session_id = TOKEN_ISSUER.verify(data, TOKEN_NOW)
    except ResumeRefused:
        return
    key_id = int.from_bytes(data[1:3], "big")
    body, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    assert hmac.compare_digest(tag, hmac.new(TOKEN_KEYS[key_id], DOMAIN + body, "sha256").digest())
    assert data[4 : 4 + data[3]] == session_id.encode()
    assert int.from_bytes(data[4 + data[3] : 12 + data[3]], "big") > TOKEN_NOW * 1000


#: CID length of the backends (the QUIC-LB single-pass config: 17 octets).
PSK_CID_LENGTH = 17
PSK_DCID = bytes.fromhex("8394c8f03e515708")


def _protect_initial(payload: bytes) -> bytes:
    """A client Initial around ``payload`` (frames), protected with the DCID's Initial keys."""
    from aioquic.buffer import encode_uint_var
    from aioquic.quic.crypto import CryptoPair

    crypto = CryptoPair()
    crypto.setup_initial(cid=PSK_DCID, is_client=True, version=1)
    payload = payload.ljust(1162 - len(PSK_DCID), b"\x00")  # PADDING up to 1200 octets
    length = encode_uint_var(4 + len(payload) + 16).rjust(2, b"\x40")
    if len(length) > 2:  # longer than a two-octet varint can say
        return b""
    header = (
        b"\xc3\x00\x00\x00\x01" + bytes((len(PSK_DCID),)) + PSK_DCID + b"\x00\x00" + length
    ) + b"\x00\x00\x00\x02"
    return crypto.encrypt_packet(header, payload, 2)


def fuzz_psk_identity(data: bytes) -> None:
    """``peek_psk_identity`` never raises. Octet 0 even: ``data[1:]`` is a whole datagram;
    odd: it is the frames of an Initial, protected here, so the fuzzer reaches the CRYPTO
    reassembly and the ClientHello parser behind the AEAD."""
    if not data:
        assert peek_psk_identity(data, PSK_CID_LENGTH) is None
        return
    datagram = data[1:] if data[0] % 2 == 0 else _protect_initial(data[1:])
    identity = peek_psk_identity(datagram, PSK_CID_LENGTH)
    assert identity is None or isinstance(identity, bytes)


TARGETS: dict[str, Target] = {
    "quiclb_decode": fuzz_quiclb_decode,
    "lb_packet": fuzz_lb_packet,
    "lb_encapsulation": fuzz_lb_encapsulation,
    "lb_router": fuzz_lb_router,
    "lb_native": fuzz_lb_native,
    "wire": fuzz_wire,
    "messages": fuzz_messages,
    "resume_token": fuzz_resume_token,
    "psk_identity": fuzz_psk_identity,
    "voice_server": fuzz_voice_server,
    "voice_client": fuzz_voice_client,
}
#: Largest input each target is given (libFuzzer's -max_len).
MAX_LEN = {
    "quiclb_decode": 64,
    "lb_packet": 1500,
    "lb_encapsulation": 256,
    "lb_router": 1500,
    "lb_native": 1500,
    "wire": 8192,
    "messages": 4096,
    "resume_token": 256,
    "psk_identity": 2048,
    "voice_server": 4096,
    "voice_client": 4096,
}
