"""One real call of the load generator, on the public client API (``quicvoice.asyncio.client``).

A call: connects to the VIP (raw QUIC, reliable uplink), says hello, places an order with the
demo agent (``order.add``, so it has state worth keeping), streams uplink frames paced by the
clock, either without pause (asking for a reply turn every ``turn_every`` seconds) or in talk
spurts of ``talk_s`` separated by ``listen_s`` of silence (asking for the reply at the end of
each spurt): ``utterance.end`` makes the demo agent echo what it heard, five times faster than
real time, optionally cut short by a barge-in; it optionally migrates its local address every
~``migrate_every`` seconds, and at the end says ``bye`` (the server's count of uplink frames),
asks ``session.arrivals`` (which frames the serving backend's application received, and when)
and ``order.list`` (is the cart intact?).

Delivered frames, server side: the final backend's application reports every frame it
received (``session.arrivals``: sequence numbers and arrival times, Unix seconds). After a
resume the client resends every frame the previous backend had not acknowledged, so frames
numbered below the lowest one the final backend received were acknowledged by an earlier
backend; ``delivered`` counts those plus the distinct frames the final backend received.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.session.events import (
    AudioReceived,
    EventReceived,
    SessionClosed,
    SessionResumed,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
)
from quicvoice.session.messages import Hello

#: One-way delay (capture to the server application) above which a frame counts as late:
#: ITU-T G.114's mouth-to-ear budget for good interactivity.
LATE_S = 0.150
#: Longest control round trip waited for (order, arrivals, bye), seconds.
REPLY_TIMEOUT = 20.0
#: Frames the demo agent remembers for ``session.arrivals`` (``quicvoice.agent.MAX_ARRIVALS``).
MAX_ARRIVALS = 3000


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What one call does."""

    call_id: int
    vip: tuple[str, int]
    #: Unix time at which to connect.
    start_at: float
    #: Seconds of uplink audio.
    duration: float
    frame_ms: int = 60
    codec: str = "PCMU/8000"
    #: Continuous microphone (``talk_s`` 0): ask for a reply turn every this many seconds
    #: (0: only at the end).
    turn_every: float = 5.0
    #: Talk spurts: send frames for ``talk_s`` seconds, ask for the reply (``utterance.end``),
    #: then ``listen_s`` seconds of silence, again.
    talk_s: float = 0.0
    listen_s: float = 0.0
    #: In silence, a small frame every this many seconds, as a DTX codec sends silence
    #: descriptors (Opus DTX: 400 ms); 0 sends nothing (see the client's liveness check).
    sid_every: float = 0.4
    #: Barge in (``cancel_turn``) once a reply turn has brought this many seconds of audio
    #: (0: let every reply play out). The demo agent echoes all it heard; a cap makes the
    #: agent's share of the conversation smaller than the caller's.
    reply_cap_s: float = 0.0
    #: Migrate the local address about every this many seconds (0: never).
    migrate_every: float = 0.0
    local_addresses: tuple[str, ...] = ("127.0.0.2", "127.0.0.3")
    #: Items ordered: the first at once, the others spread over the call.
    orders: int = 1
    liveness_timeout: float = 1.0
    reconnect_timeout: float = 20.0
    #: Return every (seq, arrival time) pair, for the benchmark's fault analysis.
    keep_arrivals: bool = False
    #: Hold application events while the client reconnects, and say goodbye only once it has
    #: resumed: a workaround for clients that sent them on a connection the server had not
    #: accepted yet, which made the server close the resumed session (``Inbox.send``); the
    #: client holds them itself since.
    hold_events: bool = False


@dataclass(slots=True)
class CallResult:
    """What happened to one call (JSON-serialisable)."""

    call_id: int
    started: bool = False
    #: Ended with the server's goodbye and every reply it asked for.
    completed: bool = False
    error: str | None = None
    connect_ms: float = 0.0
    server_first: str = ""
    server_last: str = ""
    sent: int = 0
    #: The final connection's count of uplink frames (``bye``).
    server_count: int = 0
    #: Distinct frames the final backend's application received, and the lowest of them.
    final_unique: int = 0
    final_min_seq: int = 0
    delivered: int = 0
    duplicates: int = 0
    missing: int = 0
    #: Unix time at which frame 0 was captured (see ``capture_time``).
    t0: float = 0.0
    frame_s: float = 0.06
    #: Frames per talk spurt (0: continuous), silence descriptors after it and their spacing,
    #: seconds from one spurt's start to the next.
    spurt_frames: int = 0
    sid_frames: int = 0
    sid_s: float = 0.0
    cycle_s: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    #: One-way delays (capture to server application), ms, over the final backend's frames.
    delay_p50_ms: float = 0.0
    delay_p99_ms: float = 0.0
    delay_max_ms: float = 0.0
    late: int = 0
    #: Sends more than one frame behind their schedule (the generator itself overloaded).
    send_late: int = 0
    max_send_lag_ms: float = 0.0
    resumes: list[dict[str, Any]] = field(default_factory=list)
    migrations: int = 0
    migration_errors: int = 0
    migration_gap_max_ms: float = 0.0
    items_ordered: list[str] = field(default_factory=list)
    cart: list[str] = field(default_factory=list)
    cart_intact: bool = False
    downlink_frames: int = 0
    turns_asked: int = 0
    #: Events held back while the client was reconnecting (``CallPlan.hold_events``).
    events_held: int = 0
    turns_ended: int = 0
    #: Reply turns cut short by a barge-in (``CallPlan.reply_cap_s``).
    turns_cut: int = 0
    arrivals: list[tuple[int, float]] = field(default_factory=list)

    def capture_time(self, seq: int) -> float:
        """Unix time at which uplink frame ``seq`` was captured (by the schedule)."""
        if not self.spurt_frames:
            return self.t0 + seq * self.frame_s
        cycle, index = divmod(seq, self.spurt_frames + self.sid_frames)
        start = self.t0 + cycle * self.cycle_s
        if index < self.spurt_frames:
            return start + index * self.frame_s
        return start + self.spurt_frames * self.frame_s + (index - self.spurt_frames) * self.sid_s

    def ends_spurt(self, seq: int) -> bool:
        """Whether frame ``seq`` is the last of a talk spurt."""
        per_cycle = self.spurt_frames + self.sid_frames
        return bool(self.spurt_frames) and seq % per_cycle == self.spurt_frames - 1

    def to_json(self) -> dict[str, Any]:
        """A dict for ``json.dumps``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallResult:
        """The inverse of ``to_json``."""
        result = cls(**data)
        result.arrivals = [(int(seq), float(at)) for seq, at in result.arrivals]
        return result


class Inbox:
    """Reads every event of a call: counts audio, drains playout, queues application events."""

    def __init__(self, client: VoiceClient, result: CallResult, *, hold_events: bool) -> None:
        self._client = client
        self._result = result
        self._queues: defaultdict[str, asyncio.Queue[tuple[int, Any]]] = defaultdict(asyncio.Queue)
        self._hold_events = hold_events
        self._held: list[tuple[str, Any]] = []
        self._reply_cap = 0
        self._turn_frames: dict[int, int] = {}
        self.closed: asyncio.Event = asyncio.Event()
        self.close_reason = ""
        #: Resumptions seen so far; ``epoch`` is this count when the last event returned by
        #: ``wait`` arrived (events of a new connection come after its ``SessionResumed``).
        self.resumes = 0
        self.epoch = 0

    def reconnecting(self) -> bool:
        """Whether the client is re-establishing its connection right now (see
        ``CallPlan.hold_events``)."""
        return self._client.reconnecting

    def send(self, name: str, data: Any = None) -> None:
        """Send an application event; with ``hold_events``, not while reconnecting.

        Clients before the fix sent an event at once, also on a connection whose ``welcome``
        had not come yet; the server then closed the resumed session ("unexpected event in
        state NEGOTIATING"). Held events go out when the session has resumed.
        """
        if self._hold_events and self.reconnecting():
            self._held.append((name, data))
            self._result.events_held += 1
            return
        self._client.send_event(name, data)

    async def settled(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Wait until the client is not reconnecting (before saying goodbye)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._hold_events and self.reconnecting():
            if asyncio.get_running_loop().time() > deadline or self.closed.is_set():
                return
            await asyncio.sleep(0.01)

    async def run(self) -> None:
        """Until the session closes."""
        client, result = self._client, self._result
        while True:
            event = await client.receive()
            if isinstance(event, AudioReceived):
                result.downlink_frames += 1
                if event.turn_id is not None and self._reply_cap:
                    self._count_reply(event.turn_id)
            elif isinstance(event, TurnEnded | TurnCancelled):
                result.turns_ended += isinstance(event, TurnEnded)
                result.turns_cut += isinstance(event, TurnCancelled)
                self._turn_frames.pop(event.turn_id, None)
                self._drain_playout()
            elif isinstance(event, TurnStarted):
                self._drain_playout()
            elif isinstance(event, EventReceived):
                self._queues[event.name].put_nowait((self.resumes, event.data))
            elif isinstance(event, SessionResumed):
                self.resumes += 1
                result.server_last = event.server_id
                held, self._held = self._held, []
                for name, data in held:
                    self.send(name, data)
            elif isinstance(event, SessionClosed):
                self.close_reason = event.reason or str(event.error_code)
                self.closed.set()
                return

    def cap_replies(self, frames: int) -> None:
        """Barge in on every reply turn once it has brought ``frames`` frames (0: never)."""
        self._reply_cap = frames

    def _count_reply(self, turn_id: int) -> None:
        count = self._turn_frames.get(turn_id, 0) + 1
        self._turn_frames[turn_id] = count
        if count == self._reply_cap and not self.reconnecting():
            self._client.cancel_turn(turn_id)

    def _drain_playout(self) -> None:
        playout = self._client.playout
        while playout is not None and playout.pull() is not None:
            pass

    def drain(self, name: str) -> None:
        """Forget ``name`` events already queued (before asking again)."""
        queue = self._queues[name]
        while not queue.empty():
            queue.get_nowait()

    async def wait(
        self,
        name: str,
        timeout: float = REPLY_TIMEOUT,
        matching: Callable[[Any], bool] | None = None,
    ) -> Any:
        """The data of the next ``name`` event (that ``matching`` accepts).

        ``ConnectionError`` if the session closes first, ``TimeoutError`` after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            getting = asyncio.ensure_future(self._queues[name].get())
            closing = asyncio.ensure_future(self.closed.wait())
            try:
                done, _ = await asyncio.wait(
                    {getting, closing},
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                closing.cancel()
            if getting not in done:
                getting.cancel()
                if closing in done:
                    raise ConnectionError(f"session closed waiting for {name}: {self.close_reason}")
                raise TimeoutError(f"no {name} within {timeout} s")
            epoch, data = getting.result()
            if matching is None or matching(data):
                self.epoch = epoch
                return data


async def _stream(
    client: VoiceClient, plan: CallPlan, result: CallResult, inbox: Inbox
) -> list[asyncio.Task[None]]:
    """Send ``duration`` seconds of frames on the clock; reply turns and orders on the way.

    Returns the tasks placing the later orders (the caller waits for them).
    """
    loop = asyncio.get_running_loop()
    frame_s = plan.frame_ms / 1000
    payload = os.urandom(8 * plan.frame_ms)  # one G.711 frame: 8 samples per ms
    begin = loop.time() + frame_s
    result.t0 = time.time() + (begin - loop.time())
    result.frame_s = frame_s
    # Between talk spurts, one frame of G.711 silence now and then (a comfort-noise update):
    # a whole frame, since the server refuses any other size (FRAME_MISMATCH).
    sid = bytes([0xFF]) * len(payload)
    turn_frames = 0
    if plan.talk_s > 0:
        result.spurt_frames = max(1, round(plan.talk_s / frame_s))
        if plan.sid_every > 0:
            result.sid_frames = max(1, round(plan.listen_s / plan.sid_every))
            result.sid_s = plan.listen_s / result.sid_frames
        result.cycle_s = result.spurt_frames * frame_s + plan.listen_s
    elif plan.turn_every > 0:
        turn_frames = max(1, round(plan.turn_every / frame_s))
    count = 0
    while result.capture_time(count) - result.t0 < plan.duration or count == 0:
        count += 1
    order_at = {round(count * k / plan.orders): k for k in range(1, plan.orders)}
    orders: list[asyncio.Task[None]] = []
    for index in range(count):
        due = begin + result.capture_time(index) - result.t0
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if inbox.closed.is_set():
            break
        lag = loop.time() - due
        result.max_send_lag_ms = max(result.max_send_lag_ms, lag * 1000)
        result.send_late += lag > frame_s
        speaking = not result.spurt_frames or index % (result.spurt_frames + result.sid_frames) < (
            result.spurt_frames
        )
        client.send_audio(payload if speaking else sid)
        result.sent += 1
        asks = result.ends_spurt(index) or (turn_frames and (index + 1) % turn_frames == 0)
        if asks and index + 1 < count:
            inbox.send("utterance.end")
            result.turns_asked += 1
        if index in order_at:
            placing = _place_order(client, inbox, plan, result, order_at[index])
            orders.append(loop.create_task(placing))
    return orders


async def _place_order(
    client: VoiceClient, inbox: Inbox, plan: CallPlan, result: CallResult, number: int
) -> None:
    """Order one item and wait until a cart holding it comes back, as an app would.

    Control events are not carried across a resume, so an order sent on a connection that
    died may be lost. When the answer is late and the call has resumed since the order was
    sent, the app asks for the cart on the new connection and orders again only if that cart
    lacks the item (a cart without it from the old connection proves nothing).
    """
    del client
    item = f"call {plan.call_id} item {number}"
    order = {"item": item, "call": plan.call_id, "number": number}
    inbox.drain("order.cart")
    inbox.send("order.add", order)
    sent_in = inbox.resumes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 4 * REPLY_TIMEOUT
    while loop.time() < deadline:
        try:
            cart = await inbox.wait("order.cart", timeout=5.0)
        except TimeoutError:
            if inbox.resumes > sent_in:
                inbox.send("order.list")
            continue
        if any(entry.get("item") == item for entry in cart["items"]):
            result.items_ordered.append(item)
            return
        if inbox.epoch > sent_in:  # answered on a newer connection, without the item
            inbox.send("order.add", order)
            sent_in = inbox.resumes
    raise TimeoutError(f"order {number} was never confirmed")


async def _migrate(client: VoiceClient, plan: CallPlan, result: CallResult) -> None:
    """Move between the local addresses about every ``migrate_every`` seconds."""
    rng = random.Random(plan.call_id)
    addresses = plan.local_addresses
    index = plan.call_id % len(addresses)
    while True:
        await asyncio.sleep(plan.migrate_every * rng.uniform(0.5, 1.5))
        index = (index + 1) % len(addresses)
        try:
            migration = await client.migrate(addresses[index])
        except (ConnectionError, OSError):
            result.migration_errors += 1
            continue
        result.migrations += 1
        result.migration_gap_max_ms = max(result.migration_gap_max_ms, migration.gap_ms)


def _analyse(result: CallResult, seqs: list[int], ats: list[float], keep: bool) -> None:
    """Delivered, duplicates and delays from the final backend's arrivals."""
    unique = set(seqs)
    result.final_unique = len(unique)
    result.final_min_seq = min(unique) if unique else result.sent
    result.duplicates = len(seqs) - len(unique)
    if len(seqs) >= MAX_ARRIVALS:
        # The agent's window is full: older frames were forgotten, not lost. Use the count.
        result.final_min_seq = max(0, result.sent - result.server_count)
    expected = set(range(result.final_min_seq, result.sent))
    result.missing = len(expected - unique)
    result.delivered = result.final_min_seq + len(expected & unique)
    delays = sorted(at - result.capture_time(seq) for seq, at in zip(seqs, ats, strict=True))
    if delays:
        result.delay_p50_ms = delays[len(delays) // 2] * 1000
        result.delay_p99_ms = delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000
        result.delay_max_ms = delays[-1] * 1000
        result.late = sum(d > LATE_S for d in delays)
    if keep:
        result.arrivals = list(zip(seqs, ats, strict=True))


async def _finish(client: VoiceClient, inbox: Inbox, result: CallResult, keep: bool) -> None:
    """Goodbye (every frame in), then what the server received and the cart."""
    await inbox.settled()
    result.server_count = await client.bye(timeout=REPLY_TIMEOUT)
    inbox.send("session.arrivals")
    arrivals = await inbox.wait("session.arrivals")
    _analyse(result, list(arrivals["seq"]), list(arrivals["at"]), keep)
    inbox.drain("order.cart")
    inbox.send("order.list")
    cart = await inbox.wait("order.cart")
    result.cart = [str(item.get("item")) for item in cart["items"]]
    result.cart_intact = result.cart == result.items_ordered


async def run_call(plan: CallPlan) -> CallResult:
    """Place one call as planned and report it; never raises (errors are in the result)."""
    result = CallResult(call_id=plan.call_id)
    delay = plan.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    result.started_at = time.time()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with connect(
            *plan.vip,
            local_address=plan.local_addresses[plan.call_id % len(plan.local_addresses)],
            hello=Hello(codecs=(plan.codec,), frame_ms=plan.frame_ms),
            verify=False,
            timeout=10.0,
            liveness_timeout=plan.liveness_timeout,
            reconnect_timeout=plan.reconnect_timeout,
        ) as client:
            assert client.session is not None
            result.started = True
            result.connect_ms = (time.time() - result.started_at) * 1000
            result.server_first = result.server_last = client.session.server_id
            loop = asyncio.get_running_loop()
            inbox = Inbox(client, result, hold_events=plan.hold_events)
            inbox.cap_replies(round(plan.reply_cap_s * 1000 / plan.frame_ms))
            tasks.append(loop.create_task(inbox.run()))
            await _place_order(client, inbox, plan, result, 0)
            if plan.migrate_every > 0:
                tasks.append(loop.create_task(_migrate(client, plan, result)))
            try:
                orders = await _stream(client, plan, result, inbox)
                await asyncio.gather(*orders)
            finally:
                _record_resumes(client, result)
            if inbox.closed.is_set():
                raise ConnectionError(f"session closed: {inbox.close_reason}")
            for task in tasks[1:]:
                task.cancel()  # no migration during the goodbye
            await _finish(client, inbox, result, plan.keep_arrivals)
            _record_resumes(client, result)
            result.completed = True
            result.server_last = client.session.server_id
    except Exception as error:  # a lost call is a result, not a crash of the generator
        result.error = f"{type(error).__name__}: {error}"
    finally:
        for task in tasks:
            task.cancel()
        result.ended_at = time.time()
    return result


def _record_resumes(client: VoiceClient, result: CallResult) -> None:
    result.resumes = [
        {"from": r.from_server, "to": r.to_server, "gap_ms": round(r.gap_ms, 1),
         "reason": r.reason, "attempts": r.attempts, "zero_rtt": r.zero_rtt,
         "resent": r.frames_resent, "dead_at_unix": _unix(r.declared_dead_at)}
        for r in client.resumptions
    ]  # fmt: skip


def _unix(loop_time: float) -> float:
    return time.time() - (asyncio.get_running_loop().time() - loop_time)
