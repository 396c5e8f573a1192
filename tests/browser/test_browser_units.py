"""The browser client's pieces that need no network, run in real headless Chromium.

msgpack against Python msgpack, varints against aioquic, frame and message reassembly over
arbitrary chunking, the polyphase resampler's frequency response, and both AudioWorklets
rendered offline (tones in, frames or samples out).
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from aioquic.buffer import encode_uint_var

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.asyncio.web import WebServer, start_web
from quicvoice.session.messages import Bye, Cancel, Event, Hello, Welcome, encode_message
from quicvoice.session.wire import MediaFrame, StreamKind, encode_frame, encode_stream_header

from .harness import LoopThread, chromium, require_browser

pytestmark = pytest.mark.integration

#: Runs an async function body in the page; the result (or the error) comes back to Python.
ASYNC_WRAPPER = """
const done = arguments[arguments.length - 1];
const input = arguments[0];
(async () => { %s })().then(
  (value) => done({ ok: true, value }),
  (error) => done({ ok: false, error: String(error && error.stack || error) }));
"""


class Page:
    """The demo page in Chromium, for running module code in it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def run(self, body: str, argument: Any = None) -> Any:
        result = self.driver.execute_async_script(ASYNC_WRAPPER % body, argument)
        assert result["ok"], result.get("error")
        return result["value"]


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    require_browser()
    loop = LoopThread()

    async def start() -> tuple[VoiceServer, WebServer]:
        voice = VoiceServer(BackendConfig(listen=("127.0.0.1", 0)), demo_agent)
        await voice.start()
        return voice, await start_web(voice, ("127.0.0.1", 0))

    voice, web = loop.run(start())
    try:
        with chromium(script_timeout=60) as driver:
            host, port = web.address
            driver.get(f"http://{host}:{port}/")
            yield Page(driver)
    finally:

        async def stop() -> None:
            web.close()
            voice.close()

        loop.run(stop())
        loop.close()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["nil", "bool", "int", "float", "str", "bin"]
    if depth < 3:
        kinds += ["array", "map"]
    kind = rng.choice(kinds)
    if kind == "nil":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        bits = rng.choice([5, 7, 8, 15, 16, 31, 32, 52, 53, 63])
        return rng.randint(-(2**bits), 2**bits - 1)
    if kind == "float":
        return rng.choice([0.5, -1e300, 1e-300, math.inf, -0.0, rng.uniform(-1e6, 1e6)])
    if kind == "str":
        return "".join(rng.choice("abcé€😀 ") for _ in range(rng.choice([0, 5, 31, 32, 40, 300])))
    if kind == "bin":
        return rng.randbytes(rng.choice([0, 3, 255, 256, 1000]))
    if kind == "array":
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 2, 15, 16, 20]))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.choice([0, 1, 15, 16, 17]))}


EDGE_VALUES: list[Any] = [
    0,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**53 - 1,
    2**64 - 1,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32768,
    -32769,
    -(2**31),
    -(2**31) - 1,
    -(2**63),
    1.5,
    -0.0,
    float("inf"),
    "",
    "x" * 31,
    "x" * 32,
    "x" * 255,
    "x" * 256,
    "x" * 65536,
    b"",
    b"\x00" * 255,
    b"\x00" * 256,
    b"\x00" * 65536,
    [],
    list(range(15)),
    list(range(16)),
    {"type": "hello", "version": 1, "codecs": ["L16/16000"], "frame_ms": 20},
    {f"k{i}": i for i in range(16)},
    {"nested": [{"a": [None, True, False]}]},
]


def test_msgpack_round_trips_python_vectors_byte_for_byte(page: Page) -> None:
    rng = random.Random(7)
    values = EDGE_VALUES + [random_value(rng) for _ in range(300)]
    vectors = [base64.b64encode(msgpack.packb(v, use_bin_type=True)).decode() for v in values]
    reencoded = page.run(
        """
        const { decodeMsgpack, encodeMsgpack } = await import("/quicvoice.js");
        const fromBase64 = (t) => Uint8Array.from(atob(t), (c) => c.charCodeAt(0));
        const toBase64 = (b) => {
          let text = "";
          for (let i = 0; i < b.length; i += 8192) {
            text += String.fromCharCode(...b.subarray(i, i + 8192));
          }
          return btoa(text);
        };
        return input.map((t) => toBase64(encodeMsgpack(decodeMsgpack(fromBase64(t)))));
        """,
        vectors,
    )
    assert reencoded == vectors


def test_msgpack_from_javascript_decodes_in_python(page: Page) -> None:
    encoded = page.run(
        """
        const { encodeMsgpack } = await import("/quicvoice.js");
        const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
        return [
          { type: "event", name: "order.add", data: { item: "tea", qty: 2, price: 2.5 } },
          [null, true, false, -1, 2 ** 40, -(2 ** 40), 12345678901234567890n, 0.1],
          new Uint8Array([0, 1, 255]),
          new Map([[1, "one"]]),
        ].map((v) => toHex(encodeMsgpack(v)));
        """
    )
    decoded = [msgpack.unpackb(bytes.fromhex(h), raw=False, strict_map_key=False) for h in encoded]
    assert decoded[0] == {
        "type": "event",
        "name": "order.add",
        "data": {"item": "tea", "qty": 2, "price": 2.5},
    }
    assert decoded[1] == [None, True, False, -1, 2**40, -(2**40), 12345678901234567890, 0.1]
    assert decoded[2] == b"\x00\x01\xff" and decoded[3] == {1: "one"}


def test_msgpack_refuses_malformed_input(page: Page) -> None:
    bad = ["", "92", "a3ab", "c1", "d40100", "dc", "81a1", "c0c0", "a2c328"]
    errors = page.run(
        """
        const { decodeMsgpack } = await import("/quicvoice.js");
        const fromHex = (h) => Uint8Array.from(h.match(/../g) || [], (p) => parseInt(p, 16));
        return input.map((hex) => {
          try { decodeMsgpack(fromHex(hex)); return null; }
          catch (e) { return e.name + ":" + e.message; }
        });
        """,
        bad,
    )
    assert all(error is not None for error in errors), dict(zip(bad, errors, strict=True))
    deep = page.run(
        """
        const { decodeMsgpack } = await import("/quicvoice.js");
        try { decodeMsgpack(new Uint8Array(100000).fill(0x91)); return "decoded"; }
        catch (e) { return e.message; }
        """
    )
    assert "deep" in deep


def test_varints_match_aioquic(page: Page) -> None:
    values = [0, 1, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**53, 2**62 - 1]
    result = page.run(
        """
        const { encodeVarint, readVarint } = await import("/quicvoice.js");
        const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
        return input.map((text) => {
          const bytes = encodeVarint(BigInt(text));
          const truncated = readVarint(bytes.subarray(0, bytes.length - 1));
          return [toHex(bytes), String(readVarint(bytes).value), truncated];
        });
        """,
        [str(v) for v in values],
    )
    for value, (encoded, decoded, truncated) in zip(values, result, strict=True):
        assert encoded == encode_uint_var(value).hex()
        assert int(decoded) == value
        assert truncated is None  # one octet short: not complete yet


def chunked(data: bytes, rng: random.Random) -> list[str]:
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice([1, 1, 2, 3, 7, 100, 700, 1500])
        pieces.append(data[at : at + size].hex())
        at += size
    return pieces


TURN_READER = """
const { TurnStreamReader } = await import("/quicvoice.js");
const fromHex = (h) => Uint8Array.from(h.match(/../g) || [], (p) => parseInt(p, 16));
const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const reader = new TurnStreamReader();
const frames = [];
try {
  input.forEach((hex, i) => {
    const out = reader.feed(fromHex(hex), i === input.length - 1);
    for (const f of out.frames) frames.push([f.seq, f.timestamp, toHex(f.payload)]);
  });
} catch (e) { return { error: e.code, frames, turnId: reader.turnId }; }
return { frames, turnId: reader.turnId };
"""


def test_turn_streams_reassemble_across_any_chunking(page: Page) -> None:
    rng = random.Random(3)
    frames = [
        MediaFrame(seq, (seq * 320 - 640) % 2**32, rng.randbytes(rng.choice([0, 640, 4096])))
        for seq in range(40)
    ]
    stream = encode_stream_header(StreamKind.TURN, 300) + b"".join(map(encode_frame, frames))
    for _ in range(3):
        result = page.run(TURN_READER, chunked(stream, rng))
        assert result.get("error") is None and result["turnId"] == 300
        assert result["frames"] == [[f.seq, f.timestamp, f.payload.hex()] for f in frames]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes([0x01, 0x05, 0x07]) + bytes(7), 0x103),  # frame length 7 < 8
        (bytes([0x01, 0x05, 0x50, 0x09]), 0x103),  # 4105 > 4104, refused at the prefix
        (bytes([0x01, 0x05, 0x0A]) + bytes(5), 0x103),  # stream ends inside a frame
        (bytes([0x00, 0x05]), 0x104),  # an uplink stream from the server
        (bytes([0x01]), 0x104),  # ends inside the header
    ],
)
def test_turn_stream_errors(page: Page, data: bytes, code: int) -> None:
    assert page.run(TURN_READER, [data.hex()])["error"] == code


def test_control_messages_reassemble_across_any_chunking(page: Page) -> None:
    messages = [
        Hello(),
        Welcome(
            session_id="abc",
            codec="L16/16000",
            frame_ms=20,
            uplink=Hello().uplink,
            server_id="0a000001",
            resume_token=b"\x01" * 40,
        ),
        Event(name="order.cart", data={"items": [{"item": "tea"}] * 50}),
        Cancel(turn_id=7),
        Bye(uplink_frames=123),
    ]
    stream = b"".join(encode_message(m) for m in messages)
    result = page.run(
        """
        const { MessageReader } = await import("/quicvoice.js");
        const fromHex = (h) => Uint8Array.from(h.match(/../g) || [], (p) => parseInt(p, 16));
        const reader = new MessageReader();
        const out = [];
        input.forEach((hex, i) => out.push(...reader.feed(fromHex(hex), i === input.length - 1)));
        const plain = (k, v) => v instanceof Uint8Array ? Array.from(v) : v;
        return out.map((m) => JSON.stringify(m, plain));
        """,
        chunked(stream, random.Random(5)),
    )
    expected = []
    for message in messages:
        wire = message.to_wire()
        expected.append({k: list(v) if isinstance(v, bytes) else v for k, v in wire.items()})
    assert [json.loads(m) for m in result] == expected


RESPONSE = """
const { Resampler } = await import("/resampler.js");
const [inputRate, outputRate, tones] = input;
const r = new Resampler(inputRate, outputRate);
const results = {};
for (const f of tones) {
  r.reset();
  const seconds = 1;
  const x = new Float32Array(inputRate * seconds);
  for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * f * i / inputRate);
  // Feed in render-quantum sized blocks, as the worklets do.
  const parts = [];
  for (let at = 0; at < x.length; at += 128) parts.push(r.process(x.subarray(at, at + 128)));
  const y = new Float64Array(parts.reduce((n, p) => n + p.length, 0));
  let k = 0;
  for (const p of parts) { y.set(p, k); k += p.length; }
  // Skip the filter's start-up; measure over whole cycles of the output rate.
  const start = Math.ceil(r.delaySeconds * 2 * outputRate) + 100;
  let power = 0;
  for (let i = start; i < y.length; i++) power += y[i] * y[i];
  power /= (y.length - start);
  results[f] = 10 * Math.log10(power / 0.125);
}
return { results, taps: r.taps, phases: r.up, delayMs: r.delaySeconds * 1000, outputs: null };
"""


@pytest.mark.parametrize("input_rate", [44100, 48000])
def test_capture_resampler_passes_speech_and_rejects_aliases(page: Page, input_rate: int) -> None:
    passband = [100, 300, 1000, 3000, 5000, 6500, 7000]
    stopband = [8000, 8500, 9000, 10000, 12000, 15000, 18000, 20000]
    result = page.run(RESPONSE, [input_rate, 16000, passband + stopband])
    gains = {int(f): db for f, db in result["results"].items()}
    print(
        f"{input_rate}->16000: taps/phase {result['taps']}, phases {result['phases']}, "
        f"delay {result['delayMs']:.2f} ms, gains dB {gains}"
    )
    for f in passband:
        assert abs(gains[f]) < 0.05, (f, gains[f])
    for f in stopband:  # from the output's Nyquist frequency up: nothing folds back
        assert gains[f] < -85, (f, gains[f])
    assert result["delayMs"] < 4


@pytest.mark.parametrize("output_rate", [44100, 48000])
def test_playback_resampler_rejects_images(page: Page, output_rate: int) -> None:
    result = page.run(
        """
        const { Resampler } = await import("/resampler.js");
        const outputRate = input;
        const r = new Resampler(16000, outputRate);
        const dft = (y, f, rate) => {
          let re = 0, im = 0;
          for (let i = 0; i < y.length; i++) {
            re += y[i] * Math.cos(2 * Math.PI * f * i / rate);
            im -= y[i] * Math.sin(2 * Math.PI * f * i / rate);
          }
          return 2 * Math.hypot(re, im) / y.length;
        };
        const out = {};
        for (const f of [1000, 3000, 6000]) {
          r.reset();
          const x = new Float32Array(16000);
          for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * f * i / 16000);
          const y = r.process(x);
          // One tenth of a second = whole cycles of every frequency measured.
          const window = y.subarray(outputRate / 10, outputRate / 5);
          const amplitude = dft(window, f, outputRate);
          const images = [16000 - f, 16000 + f, 32000 - f].filter((g) => g < outputRate / 2)
            .map((g) => 20 * Math.log10(dft(window, g, outputRate) / amplitude));
          out[f] = { gainDb: 20 * Math.log10(amplitude / 0.5), worstImageDb: Math.max(...images) };
        }
        return out;
        """,
        output_rate,
    )
    print(f"16000->{output_rate}: {result}")
    for measured in result.values():
        assert abs(measured["gainDb"]) < 0.05
        assert measured["worstImageDb"] < -85


def test_capture_worklet_renders_tones_into_16k_frames(page: Page) -> None:
    result = page.run(
        """
        const rate = 44100;
        const frameRms = async (frequency) => {
          const context = new OfflineAudioContext(1, rate, rate);
          await context.audioWorklet.addModule("/capture-worklet.js");
          const node = new AudioWorkletNode(context, "quicvoice-capture", {
            numberOfOutputs: 1, processorOptions: { targetRate: 16000, frameMs: 20 } });
          const frames = [];
          node.port.onmessage = (e) => { if (e.data.type === "frame") frames.push(e.data); };
          const tone = new OscillatorNode(context, { frequency });
          const gain = new GainNode(context, { gain: 0.5 });
          tone.connect(gain).connect(node).connect(context.destination);
          tone.start();
          await context.startRendering();
          await new Promise((r) => setTimeout(r, 300));
          const steady = frames.slice(2);
          let sum = 0, count = 0;
          for (const f of steady) for (const s of f.samples) { sum += (s / 32768) ** 2; count++; }
          return { frames: frames.length, size: frames[0].samples.length,
                   timestamps: frames.slice(0, 3).map((f) => f.timestamp),
                   power: sum / count / 0.125 };
        };
        return { pass: await frameRms(1000), alias: await frameRms(11000) };
        """
    )
    print(f"capture worklet at 44.1 kHz: {result}")
    assert result["pass"]["size"] == 320 and result["pass"]["timestamps"] == [0, 320, 640]
    assert result["pass"]["frames"] >= 49
    assert abs(10 * math.log10(result["pass"]["power"])) < 0.1
    # 16-bit output: the residue is below one quantisation step (a naive decimator's is 0 dB).
    alias = result["alias"]["power"]
    assert alias == 0 or 10 * math.log10(alias) < -80


def test_playback_worklet_plays_turns_in_time(page: Page) -> None:
    result = page.run(
        """
        const rate = 48000;
        const context = new OfflineAudioContext(1, rate, rate);
        await context.audioWorklet.addModule("/playback-worklet.js");
        const node = new AudioWorkletNode(context, "quicvoice-playback", {
          numberOfInputs: 0, outputChannelCount: [1],
          processorOptions: { codecRate: 16000, targetMs: 60 } });
        const messages = [];
        node.port.onmessage = (e) => messages.push(e.data);
        node.connect(context.destination);
        const frame = (n, ts) => {
          const s = new Int16Array(320);
          for (let i = 0; i < 320; i++) {
            s[i] = Math.round(16384 * Math.sin(2 * Math.PI * 1000 * (n * 320 + i) / 16000));
          }
          return { type: "frame", turnId: 0, timestamp: ts, samples: s };
        };
        // Offline rendering does not stop for port messages: pause it while they are delivered.
        context.suspend(256 / rate).then(async () => {
          // Turn 0: 10 frames, a 100 ms hole in the timestamps, 10 frames; turn 1 is cancelled.
          for (let n = 0; n < 10; n++) node.port.postMessage(frame(n, 1000 + n * 320));
          for (let n = 15; n < 25; n++) node.port.postMessage(frame(n, 1000 + n * 320));
          node.port.postMessage({ type: "end", turnId: 0 });
          node.port.postMessage({ ...frame(0, 0), turnId: 1 });
          node.port.postMessage({ type: "cancel", turnId: 1 });
          await new Promise((r) => setTimeout(r, 200));
          context.resume();
        });
        const buffer = await context.startRendering();
        await new Promise((r) => setTimeout(r, 300));
        const out = buffer.getChannelData(0);
        // Where the sound is: 2 ms blocks above -40 dBFS.
        const block = rate / 500, loud = [];
        for (let b = 0; b < out.length / block; b++) {
          let p = 0;
          for (let i = b * block; i < (b + 1) * block; i++) p += out[i] * out[i];
          loud.push(p / block > 1e-4 ? 1 : 0);
        }
        const runs = [];
        loud.forEach((v, i) => {
          if (v && (i === 0 || !loud[i - 1])) runs.push([i * 2, i * 2]);
          if (v) runs[runs.length - 1][1] = i * 2 + 2;
        });
        const stats = messages.filter((m) => m.type === "stats").pop();
        return { runs, stats, events: messages.filter((m) => m.type.startsWith("turn")) };
        """
    )
    print(f"playback worklet: {result['runs']} {result['stats']}")
    runs = result["runs"]
    assert len(runs) == 2, runs
    first, second = runs
    assert abs((first[1] - first[0]) - 200) <= 4  # 10 frames of 20 ms
    assert abs((second[0] - first[1]) - 100) <= 4  # the hole plays as 100 ms of silence
    assert abs((second[1] - second[0]) - 200) <= 4
    stats = result["stats"]
    assert stats["framesPlayed"] == 20 and stats["turnsFinished"] == 1
    assert stats["turnsCancelled"] == 1 and stats["underruns"] == 0
    assert abs(stats["rms"] - 0.5 / math.sqrt(2)) < 0.01
    assert [e["type"] for e in result["events"]] == ["turn-playing", "turn-finished"]
