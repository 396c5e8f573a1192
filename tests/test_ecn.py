"""ECN bookkeeping (quicvoice.ecn, sans-I/O) and its aioquic glue, with a hostile peer."""

from __future__ import annotations

import socket
import ssl

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import pull_quic_header
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice import cli
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.udp import received_tos
from quicvoice.certificates import generate_certificate
from quicvoice.ecn import (
    Codepoint,
    EcnCounts,
    EcnFeedback,
    EcnMode,
    EcnTracker,
    Validation,
    session_report,
)
from quicvoice.errors import ConfigurationError
from quicvoice.quic import VoiceQuicConnection

APP = 3  # the application space (aioquic's ONE_RTT epoch)
PATH = "192.0.2.1:4433"


def send(tracker: EcnTracker, numbers: range, path: str = PATH) -> None:
    for number in numbers:
        tracker.on_packet_sent(APP, number, path, tracker.send_codepoint(path))


def test_modes_mark_their_codepoint() -> None:
    assert EcnTracker(EcnMode.L4S).send_codepoint(PATH) is Codepoint.ECT1
    assert EcnTracker(EcnMode.CLASSIC).send_codepoint(PATH) is Codepoint.ECT0
    off = EcnTracker(EcnMode.OFF)
    assert off.send_codepoint(PATH) is Codepoint.NOT_ECT
    assert off.validation(PATH) is Validation.DISABLED
    assert EcnMode.parse(" Classic ") is EcnMode.CLASSIC
    with pytest.raises(ValueError, match="ecn must be one of"):
        EcnMode.parse("ect1")


def test_counts_that_add_up_make_the_path_capable_and_report_ce() -> None:
    tracker = EcnTracker()
    seen: list[EcnFeedback] = []
    tracker.listener = seen.append
    send(tracker, range(10))
    feedback = tracker.on_ack_received(
        APP, list(range(10)), 9, EcnCounts(ect1=8, ce=2), application=True
    )
    assert feedback is not None and seen == [feedback]
    assert feedback.newly_acked_ect1 == 10 and feedback.newly_ce == 2
    assert feedback.acked_packets == 10
    assert tracker.validation(PATH) is Validation.CAPABLE
    stats = tracker.path_stats()[0]
    assert stats.peer_ce == 2 and stats.l4s_bottleneck_seen


def test_a_plain_ack_for_marked_packets_means_bleached_and_marking_stops() -> None:
    tracker = EcnTracker()
    send(tracker, range(3))
    tracker.on_ack_received(APP, [0, 1, 2], 2, None, application=True)
    assert tracker.validation(PATH) is Validation.BLEACHED
    assert tracker.send_codepoint(PATH) is Codepoint.NOT_ECT
    # Another path (a migration) starts over.
    assert tracker.send_codepoint("198.51.100.7:5000") is Codepoint.ECT1


def test_ect1_rewritten_to_ect0_is_mangled() -> None:
    tracker = EcnTracker()
    send(tracker, range(4))
    tracker.on_ack_received(APP, [0, 1, 2, 3], 3, EcnCounts(ect0=4), application=True)
    assert tracker.validation(PATH) is Validation.MANGLED


def test_counts_going_backwards_turn_ecn_off_and_are_not_kept() -> None:
    tracker = EcnTracker()
    send(tracker, range(4))
    tracker.on_ack_received(APP, [0, 1], 1, EcnCounts(ect1=2), application=True)
    assert tracker.validation(PATH) is Validation.CAPABLE
    tracker.on_ack_received(APP, [2, 3], 3, EcnCounts(ect1=1), application=True)
    assert tracker.validation(PATH) is Validation.MANGLED
    assert "backwards" in tracker.path_stats()[0].failure


def test_more_marks_than_packets_sent_turn_ecn_off() -> None:
    tracker = EcnTracker()
    send(tracker, range(2))
    tracker.on_ack_received(APP, [0, 1], 1, EcnCounts(ect1=2, ce=5), application=True)
    assert tracker.validation(PATH) is Validation.MANGLED
    assert tracker.send_codepoint(PATH) is Codepoint.NOT_ECT


def test_a_reordered_older_ack_proves_nothing() -> None:
    tracker = EcnTracker()
    send(tracker, range(4))
    tracker.on_ack_received(APP, [2, 3], 3, EcnCounts(ect1=2), application=True)
    # An older ACK arriving late, with lower counts: ignored, not a failure.
    assert tracker.on_ack_received(APP, [0], 0, EcnCounts(ect1=1), application=True) is None
    assert tracker.validation(PATH) is Validation.CAPABLE


def test_received_codepoints_are_counted_and_garbage_is_not_trusted() -> None:
    tracker = EcnTracker()
    for tos in (0x00, 0x01, 0x02, 0x03, 0xB9, None, 300, -1):
        tracker.on_datagram_received(PATH, tos)
    stats = tracker.path_stats()[0]
    assert (stats.received_not_ect, stats.received_ect1, stats.received_ect0) == (1, 2, 1)
    assert stats.received_ce == 1 and stats.received_unknown == 3
    assert stats.ce_ratio == pytest.approx(1 / 5)
    report = session_report("l4s", tracker.path_stats())
    assert report["received"] == {"not_ect": 1, "ect0": 1, "ect1": 2, "ce": 1, "unknown": 3}
    assert report["l4s_bottleneck_seen"] is True


def test_ack_ecn_counts_are_per_packet_and_absent_until_a_mark_arrives() -> None:
    tracker = EcnTracker()
    tracker.on_packet_received(APP, Codepoint.NOT_ECT)
    assert tracker.counts_to_report(APP) is None
    for codepoint in (Codepoint.ECT1, Codepoint.ECT1, Codepoint.CE, None):
        tracker.on_packet_received(APP, codepoint)
    assert tracker.counts_to_report(APP) == EcnCounts(ect1=2, ce=1)


counts = st.builds(
    EcnCounts,
    ect0=st.integers(0, 2**62 - 1),
    ect1=st.integers(0, 2**62 - 1),
    ce=st.integers(0, 2**62 - 1),
)


@settings(max_examples=300, deadline=None)
@given(
    acks=st.lists(
        st.tuples(
            st.lists(st.integers(0, 40), max_size=12), st.integers(-1, 2**62), st.none() | counts
        ),
        max_size=20,
    ),
    mode=st.sampled_from(list(EcnMode)),
)
def test_any_acks_a_peer_sends_never_raise_and_failure_is_final(
    acks: list[tuple[list[int], int, EcnCounts | None]], mode: EcnMode
) -> None:
    tracker = EcnTracker(mode)
    send(tracker, range(30))
    failed = False
    for acked, largest, reported in acks:
        feedback = tracker.on_ack_received(APP, acked, largest, reported, application=True)
        if feedback is not None:
            assert 0 <= feedback.newly_ce and feedback.acked_packets >= 0
        state = tracker.validation(PATH)
        if failed:
            assert state.failed
        failed = state.failed
        if state.failed:
            assert tracker.send_codepoint(PATH) is Codepoint.NOT_ECT
    stats = tracker.path_stats()
    assert all(path.peer_ce <= 30 for path in stats)  # CE beyond what was marked is refused


cmsg = st.tuples(
    st.sampled_from([socket.IPPROTO_IP, socket.IPPROTO_IPV6, socket.SOL_SOCKET, 99]),
    st.sampled_from([socket.IP_TOS, 67, 0, 1, 13]),
    st.binary(max_size=9),
)


@given(st.lists(cmsg, max_size=4))
def test_any_ancillary_data_gives_an_octet_or_nothing(
    ancdata: list[tuple[int, int, bytes]],
) -> None:
    tos = received_tos(ancdata)
    assert tos is None or 0 <= tos <= 0xFF


# -- the glue: two aioquic connections in memory -------------------------------------------


class Pair:
    """A client and a server ``VoiceQuicConnection`` exchanging datagrams in memory, each
    datagram carrying the TOS its sender's ECN state asks for (or what ``bleach`` makes it)."""

    CLIENT = ("127.0.0.1", 50000)
    SERVER = ("127.0.0.1", 4433)

    def __init__(
        self, *, client_ecn: EcnMode = EcnMode.L4S, bleach: bool = False, drop_marked: bool = False
    ) -> None:
        development = generate_certificate()
        self.server_configuration = QuicConfiguration(is_client=False, alpn_protocols=["x"])
        self.server_configuration.certificate = development.certificate
        self.server_configuration.private_key = development.private_key
        client_configuration = QuicConfiguration(
            is_client=True, alpn_protocols=["x"], verify_mode=ssl.CERT_NONE
        )
        self.client = VoiceQuicConnection(configuration=client_configuration, ecn=client_ecn)
        self.server: VoiceQuicConnection | None = None
        self.bleach = bleach
        #: A network that drops every ECT packet from the client.
        self.drop_marked = drop_marked
        self.now = 0.0
        self.client.connect(self.SERVER, now=self.now)

    def exchange(self, rounds: int = 30) -> None:
        for _ in range(rounds):
            self.now += 0.005
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                moved = True
                tos = 0 if self.bleach else int(self.client.ecn_codepoint(self.SERVER))
                if self.drop_marked and tos:
                    continue
                if self.server is None:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                    self.server = VoiceQuicConnection(
                        configuration=self.server_configuration,
                        original_destination_connection_id=header.destination_cid,
                    )
                self.server.receive_datagram_ecn(data, self.CLIENT, self.now, tos)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(self.now):
                    tos = 0 if self.bleach else int(self.server.ecn_codepoint(self.CLIENT))
                    self.client.receive_datagram_ecn(data, self.SERVER, self.now, tos)
                    moved = True
            if not moved:
                timers = [self.client.get_timer()]
                if self.server is not None:
                    timers.append(self.server.get_timer())
                pending = [timer for timer in timers if timer is not None]
                if not pending or min(pending) > self.now + 5.0:
                    return  # only the idle timer is left: the exchange is over
                self.now = max(self.now, min(pending))
                self.client.handle_timer(self.now)
                if self.server is not None:
                    self.server.handle_timer(self.now)

    def talk(self, messages: int = 6) -> None:
        for _ in range(messages):
            stream_id = self.client.get_next_available_stream_id()
            self.client.send_stream_data(stream_id, b"hello", end_stream=True)
            self.exchange(4)


def test_ack_frames_carry_ecn_counts_and_both_sides_validate() -> None:
    pair = Pair()
    pair.exchange()
    pair.talk()
    assert pair.server is not None
    client, server = pair.client.ecn.path_stats()[0], pair.server.ecn.path_stats()[0]
    assert client.validation is Validation.CAPABLE and server.validation is Validation.CAPABLE
    assert client.received_ect1 > 0 and server.received_ect1 > 0
    assert pair.client.ecn.last_feedback is not None
    assert pair.client.ecn.last_feedback.newly_acked_ect1 > 0


def test_a_bleaching_path_turns_marking_off_on_both_sides() -> None:
    pair = Pair(bleach=True)
    pair.exchange()
    pair.talk()
    assert pair.server is not None
    assert pair.client.ecn.validation(pair.client.ecn_path_name(Pair.SERVER)).failed
    assert pair.client.ecn_codepoint(Pair.SERVER) is Codepoint.NOT_ECT
    assert pair.server.ecn_codepoint(Pair.CLIENT) is Codepoint.NOT_ECT
    assert pair.server.ecn.path_stats()[0].validation is Validation.BLEACHED


def test_a_path_that_drops_marked_packets_turns_marking_off_and_the_handshake_completes() -> None:
    pair = Pair(drop_marked=True)
    pair.exchange(200)
    assert pair.server is not None
    path = pair.client.ecn.path_stats()[0]
    assert path.validation is Validation.LOST and path.sent_unmarked > 0
    assert pair.client._handshake_complete and pair.server._handshake_complete
    pair.talk()
    assert pair.client._close_event is None


def test_classic_client_counts_ect0() -> None:
    pair = Pair(client_ecn=EcnMode.CLASSIC)
    pair.exchange()
    pair.talk()
    assert pair.server is not None
    assert pair.server.ecn.path_stats()[0].received_ect0 > 0
    assert pair.client.ecn.path_stats()[0].validation is Validation.CAPABLE


@settings(max_examples=40, deadline=None)
@given(reports=st.lists(counts, min_size=1, max_size=6))
def test_a_peer_reporting_impossible_counts_gets_ecn_off_not_a_closed_connection(
    reports: list[EcnCounts],
) -> None:
    pair = Pair()
    pair.exchange()
    assert pair.server is not None
    hostile = pair.server
    queue = list(reports)

    def lying(space: int) -> EcnCounts | None:
        return queue.pop(0) if queue else EcnCounts(ect1=2**62 - 1)

    hostile.ecn.counts_to_report = lying  # type: ignore[method-assign]
    pair.talk(4)
    path = pair.client.ecn_path_name(Pair.SERVER)
    # Whatever the counts said, the connection lives on and still carries data.
    assert pair.client._close_event is None
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, b"still here", end_stream=True)
    pair.exchange(4)
    assert pair.client._close_event is None
    # The last reports counted more ECT(1) than was ever sent: ECN is off on that path
    # (bleached instead when an earlier report repeated the true counts without a rise).
    assert pair.client.ecn.validation(path).failed
    assert pair.client.ecn_codepoint(Pair.SERVER) is Codepoint.NOT_ECT


# -- configuration from outside: the backend's TOML key and the command line ------------------


@given(
    value=st.one_of(
        st.text(max_size=12),
        st.integers(),
        st.booleans(),
        st.none(),
        st.lists(st.text(max_size=3), max_size=2),
    )
)
def test_any_ecn_value_in_a_backend_file_is_a_mode_or_a_configuration_error_naming_it(
    value: object,
) -> None:
    try:
        config = BackendConfig.from_mapping({"ecn": value})
    except ConfigurationError as error:
        assert str(error).startswith("ecn")
    else:
        assert isinstance(value, str)
        assert config.ecn.value == value.strip().lower()


def test_the_command_line_refuses_an_unknown_ecn_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["call", "127.0.0.1:4433", "--ecn", "ect1"])
    assert exit_info.value.code == 2
    assert "--ecn" in capsys.readouterr().err


def test_the_path_sent_on_last_is_the_last_in_the_stats() -> None:
    tracker = EcnTracker()
    send(tracker, range(2), "a")
    send(tracker, range(2, 4), "b")
    send(tracker, range(4, 6), "a")  # back on the first path (a migration back)
    assert [path.path for path in tracker.path_stats()] == ["b", "a"]
