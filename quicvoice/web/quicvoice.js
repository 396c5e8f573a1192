// quicvoice browser client: the session protocol (specs/protocol.md) over WebTransport, plus
// microphone capture and turn playback through AudioWorklets. No dependencies.
//
//   const session = await connect("https://127.0.0.1:4433/voice",
//                                 { serverCertificateHashes: ["<sha-256 hex>"] });
//   session.addEventListener("event", (e) => console.log(e.detail.name, e.detail.data));
//   const player = await createPlayer(); player.attach(session);
//   const mic = await startMicrophone(session); mic.talking = true;

import { decode, encode } from "./msgpack.js";

export { decode as decodeMsgpack, encode as encodeMsgpack } from "./msgpack.js";

export const PROTOCOL_VERSION = 1;
export const ErrorCode = Object.freeze({
  NO_ERROR: 0x0,
  CANCELLED: 0x10,
  PROTOCOL_ERROR: 0x100,
  MESSAGE_ERROR: 0x101,
  UNKNOWN_MESSAGE: 0x102,
  FRAME_ERROR: 0x103,
  STREAM_ERROR: 0x104,
  LIMIT_EXCEEDED: 0x105,
  HELLO_REQUIRED: 0x106,
  UNSUPPORTED: 0x107,
  INTERNAL_ERROR: 0x108,
  RESUME_REFUSED: 0x109,
  UNAUTHENTICATED: 0x10a,
  TOKEN_MALFORMED: 0x10b,
  TOKEN_EXPIRED: 0x10c,
  TOKEN_NOT_YET_VALID: 0x10d,
  TOKEN_WRONG_AUDIENCE: 0x10e,
  TOKEN_WRONG_ISSUER: 0x10f,
  TOKEN_BAD_SIGNATURE: 0x110,
  TOKEN_UNKNOWN_KEY: 0x111,
  REFUSED: 0x112,
  VERSION_UNSUPPORTED: 0x113,
  FRAME_MISMATCH: 0x114,
});

/** The name of a protocol error code ("FRAME_MISMATCH"), or its hex ("0x1234"). */
export function errorName(code) {
  for (const [name, value] of Object.entries(ErrorCode)) if (value === code) return name;
  return typeof code === "number" ? `0x${code.toString(16)}` : String(code);
}
export const MAX_MESSAGE_LEN = 64 * 1024;
/** How long a failing stream waits for the session's close to explain it, in ms. */
const CLOSE_GRACE_MS = 500;
export const FRAME_HEADER_LEN = 8;
export const MAX_FRAME_PAYLOAD = 4096;
const STREAM_UPLINK = 0x00;
const STREAM_TURN = 0x01;
const DATAGRAM_UPLINK = 0x00;

export class ProtocolError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------
// Wire format: QUIC varints, a byte queue that reassembles stream chunks, frame readers.

/** Encode a QUIC variable-length integer (RFC 9000 §16); `value` is a Number or BigInt. */
export function encodeVarint(value) {
  const big = BigInt(value);
  if (big < 0n) throw new RangeError("varint must be >= 0");
  if (big < 0x40n) return Uint8Array.of(Number(big));
  if (big < 0x4000n) return Uint8Array.of(0x40 | Number(big >> 8n), Number(big & 0xffn));
  if (big < 0x40000000n) {
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, Number(big) | 0x80000000);
    return out;
  }
  if (big < 1n << 62n) {
    const out = new Uint8Array(8);
    new DataView(out.buffer).setBigUint64(0, big | (0xc0n << 56n));
    return out;
  }
  throw new RangeError("varint must be < 2^62");
}

/**
 * Read a varint from `bytes` at `offset`: { value, next }, or null when the bytes end first.
 * Values above 2^53 come back as BigInt.
 */
export function readVarint(bytes, offset = 0) {
  if (offset >= bytes.length) return null;
  const first = bytes[offset];
  const length = 1 << (first >> 6);
  if (offset + length > bytes.length) return null;
  let value = BigInt(first & 0x3f);
  for (let i = 1; i < length; i++) value = (value << 8n) | BigInt(bytes[offset + i]);
  return {
    value: value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value,
    next: offset + length,
  };
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Bytes that arrive in arbitrary chunks, consumed from the front. */
export class ByteQueue {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }

  push(chunk) {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.length += chunk.length;
    }
  }

  /** The first `count` bytes (count <= length) as one array, without consuming them. */
  peek(count) {
    if (this.chunks.length && this.chunks[0].length >= count) return this.chunks[0].subarray(0, count);
    const out = new Uint8Array(count);
    let at = 0;
    for (const chunk of this.chunks) {
      const take = Math.min(chunk.length, count - at);
      out.set(chunk.subarray(0, take), at);
      at += take;
      if (at === count) break;
    }
    return out;
  }

  take(count) {
    const out = this.peek(count).slice();
    let left = count;
    while (left > 0) {
      const head = this.chunks[0];
      if (head.length <= left) {
        this.chunks.shift();
        left -= head.length;
      } else {
        this.chunks[0] = head.subarray(left);
        left = 0;
      }
    }
    this.length -= count;
    return out;
  }

  /** Consume a varint: its value, or null if it is not complete yet. */
  varint() {
    if (!this.length) return null;
    const size = 1 << (this.peek(1)[0] >> 6);
    if (this.length < size) return null;
    return readVarint(this.take(size)).value;
  }
}

/** Reassembles length-prefixed control messages (msgpack maps) from stream chunks. */
export class MessageReader {
  constructor() {
    this.queue = new ByteQueue();
    this.pending = null;
  }

  /** Feed a chunk; returns the messages it completes. `end`: the stream finished. */
  feed(chunk, end = false) {
    this.queue.push(chunk);
    const messages = [];
    for (;;) {
      if (this.pending === null) {
        const length = this.queue.varint();
        if (length === null) break;
        if (typeof length !== "number" || length < 1 || length > MAX_MESSAGE_LEN) {
          throw new ProtocolError(`control message length ${length} out of range`, ErrorCode.MESSAGE_ERROR);
        }
        this.pending = length;
      }
      if (this.queue.length < this.pending) break;
      const body = this.queue.take(this.pending);
      this.pending = null;
      let message;
      try {
        message = decode(body);
      } catch (error) {
        throw new ProtocolError(`undecodable control message: ${error.message}`, ErrorCode.MESSAGE_ERROR);
      }
      if (message === null || typeof message !== "object" || Array.isArray(message) ||
          message instanceof Uint8Array || message instanceof Map) {
        throw new ProtocolError("a control message must be a map", ErrorCode.MESSAGE_ERROR);
      }
      messages.push(message);
    }
    if (end && (this.pending !== null || this.queue.length)) {
      throw new ProtocolError("control stream ended inside a message", ErrorCode.MESSAGE_ERROR);
    }
    return messages;
  }
}

/** Encode a control message: varint length, then the msgpack map. */
export function encodeMessage(message) {
  const body = encode(message);
  if (body.length > MAX_MESSAGE_LEN) throw new RangeError(`${message.type} message too long`);
  return concat(encodeVarint(body.length), body);
}

/** Encode one media frame as written on a stream: varint length | seq | timestamp | payload. */
export function encodeFrame(seq, timestamp, payload) {
  if (payload.length > MAX_FRAME_PAYLOAD) throw new RangeError("frame payload too long");
  const head = new Uint8Array(FRAME_HEADER_LEN);
  const view = new DataView(head.buffer);
  view.setUint32(0, seq >>> 0);
  view.setUint32(4, timestamp >>> 0);
  return concat(encodeVarint(FRAME_HEADER_LEN + payload.length), head, payload);
}

/** Encode one realtime uplink datagram: 0x00 | seq | timestamp | payload. */
export function encodeDatagram(seq, timestamp, payload) {
  const out = new Uint8Array(1 + FRAME_HEADER_LEN + payload.length);
  const view = new DataView(out.buffer);
  out[0] = DATAGRAM_UPLINK;
  view.setUint32(1, seq >>> 0);
  view.setUint32(5, timestamp >>> 0);
  out.set(payload, 9);
  return out;
}

/**
 * Parses a server unidirectional stream: `varint kind` (0x01 = turn), `varint turn_id`, then
 * media frames. A length outside 8..4104 is refused as soon as its prefix is read.
 */
export class TurnStreamReader {
  constructor() {
    this.queue = new ByteQueue();
    this.kind = null;
    this.turnId = null;
    this.pending = null;
  }

  /** Feed a chunk; returns { header: bool (kind and turnId just became known), frames }. */
  feed(chunk, end = false) {
    this.queue.push(chunk);
    const frames = [];
    let header = false;
    if (this.kind === null) {
      const kind = this.queue.varint();
      if (kind !== null) {
        if (kind !== STREAM_TURN) {
          throw new ProtocolError(`unexpected stream kind ${kind} from the server`, ErrorCode.STREAM_ERROR);
        }
        this.kind = kind;
      }
    }
    if (this.kind !== null && this.turnId === null) {
      const turnId = this.queue.varint();
      if (turnId !== null) {
        this.turnId = turnId;
        header = true;
      }
    }
    if (this.turnId !== null) {
      for (;;) {
        if (this.pending === null) {
          const length = this.queue.varint();
          if (length === null) break;
          if (typeof length !== "number" || length < FRAME_HEADER_LEN ||
              length > FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD) {
            throw new ProtocolError(`frame length ${length} out of range`, ErrorCode.FRAME_ERROR);
          }
          this.pending = length;
        }
        if (this.queue.length < this.pending) break;
        const body = this.queue.take(this.pending);
        this.pending = null;
        const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
        frames.push({
          seq: view.getUint32(0),
          timestamp: view.getUint32(4),
          payload: body.subarray(FRAME_HEADER_LEN),
        });
      }
    }
    if (end) {
      if (this.turnId === null) throw new ProtocolError("stream ended inside its header", ErrorCode.STREAM_ERROR);
      if (this.pending !== null || this.queue.length) {
        throw new ProtocolError("stream ended inside a frame", ErrorCode.FRAME_ERROR);
      }
    }
    return { header, frames };
  }
}

// ---------------------------------------------------------------------------------------
// L16 (RFC 3551): big-endian signed 16-bit.

export function encodeL16(samples) {
  const out = new Uint8Array(samples.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < samples.length; i++) view.setInt16(i * 2, samples[i], false);
  return out;
}

export function decodeL16(payload) {
  if (payload.length % 2) throw new ProtocolError("odd L16 payload", ErrorCode.FRAME_ERROR);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = new Int16Array(payload.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, false);
  return out;
}

function parseCodec(text) {
  const match = /^([A-Za-z0-9]+)\/(\d+)$/.exec(text ?? "");
  return match ? { name: match[1], rate: Number(match[2]) } : null;
}

function hexToBytes(hex) {
  const clean = hex.replace(/[^0-9a-fA-F]/g, "");
  if (clean.length !== 64) throw new RangeError("a SHA-256 certificate hash is 64 hex digits");
  return Uint8Array.from(clean.match(/../g), (pair) => parseInt(pair, 16));
}

/** serverCertificateHashes entries from hex strings, byte arrays or ready-made dictionaries. */
export function certificateHashes(hashes) {
  return (hashes ?? []).filter((h) => h !== null && h !== undefined).map((hash) => {
    if (typeof hash === "string") return { algorithm: "sha-256", value: hexToBytes(hash) };
    if (hash instanceof Uint8Array || hash instanceof ArrayBuffer) {
      return { algorithm: "sha-256", value: new Uint8Array(hash) };
    }
    return hash;
  });
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------
// The session.

/**
 * One voice session over WebTransport. Events (CustomEvent, data in `detail`):
 *   welcome {sessionId, codec, frameMs, uplink, serverId, resumed, resumeToken}
 *   turnstart {turnId}   audio {turnId, seq, timestamp, samples: Int16Array}
 *   turnend {turnId}     cancel {turnId, byPeer}
 *   event {name, data}   error {code, message, remote}   bye {uplinkFrames}
 *   close {code, reason}: the server's code and reason when it closed the session (its
 *         CLOSE_WEBTRANSPORT_SESSION capsule: a refusal before welcome, a protocol error),
 *         or code null when the connection was lost without one.
 * Options: codecs, frameMs, uplink, token, metadata, resumeToken, serverCertificateHashes,
 *   congestionControl, connectTimeoutMs, maxQueuedFrames, protocolVersion (tests only).
 */
export class VoiceSession extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      codecs: ["L16/16000"],
      frameMs: 20,
      uplink: "reliable",
      connectTimeoutMs: 10000,
      maxQueuedFrames: 50,
      ...options,
    };
    this.state = "connecting";
    /** How the session ended: {code, reason} once closed (code null: connection lost). */
    this.closeInfo = null;
    this.welcome = null;
    this.codec = null;
    this.transport = null;
    this.seq = 0;
    this.timestamp = 0;
    this.turns = new Map(); // turnId -> { reader, cancelled, ended, frames }
    this.cancelledTurns = new Set();
    this.stats = {
      uplinkFramesSent: 0,
      uplinkFramesDropped: 0,
      uplinkBytesSent: 0,
      downlinkFramesReceived: 0,
      downlinkBytesReceived: 0,
      downlinkFramesDiscarded: 0,
      turns: 0,
      turnsEnded: 0,
      turnsCancelled: 0,
      eventsSent: 0,
      eventsReceived: 0,
      connectMs: null,
      welcomeMs: null,
    };
    this._byeReceived = null;
    this.ready = this._open();
    this.ready.catch(() => {});
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async _open() {
    const started = performance.now();
    const init = {};
    const hashes = certificateHashes(this.options.serverCertificateHashes);
    if (hashes.length) init.serverCertificateHashes = hashes;
    if (this.options.congestionControl) init.congestionControl = this.options.congestionControl;
    this.transport = new WebTransport(this.url, init);
    this.transport.closed.then(
      (info) => this._onClosed(info?.closeCode ?? 0, info?.reason ?? ""),
      (error) => this._onClosed(null, String(error?.message ?? error)),
    );
    await withTimeout(this.transport.ready, this.options.connectTimeoutMs, "WebTransport connect");
    this.stats.connectMs = performance.now() - started;
    const control = await this.transport.createBidirectionalStream();
    this._controlWriter = control.writable.getWriter();
    this._welcome = new Promise((resolve, reject) => {
      this._resolveWelcome = resolve;
      this._rejectWelcome = reject;
    });
    this._welcome.catch(() => {});
    this._readControl(control.readable);
    this._acceptTurns();
    this.state = "awaiting-welcome";
    const hello = {
      type: "hello",
      version: this.options.protocolVersion ?? PROTOCOL_VERSION,
      codecs: this.options.codecs,
      frame_ms: this.options.frameMs,
      uplink: this.options.uplink,
    };
    if (this.options.resumeToken) hello.resume_token = this.options.resumeToken;
    if (this.options.token) hello.token = this.options.token;
    if (this.options.metadata) hello.metadata = this.options.metadata;
    this._sendMessage(hello);
    const welcome = await withTimeout(this._welcome, this.options.connectTimeoutMs, "welcome");
    this.stats.welcomeMs = performance.now() - started;
    if (welcome.uplink === "reliable") {
      const uplink = await this.transport.createUnidirectionalStream();
      this._uplinkWriter = uplink.getWriter();
      this._uplinkWriter.write(encodeVarint(STREAM_UPLINK)).catch((e) => this._fail(e));
    } else {
      this._datagramWriter = this.transport.datagrams.writable.getWriter();
    }
    return this;
  }

  _sendMessage(message) {
    this._controlWriter.write(encodeMessage(message)).catch((error) => this._fail(error));
  }

  async _readControl(readable) {
    const reader = readable.getReader();
    const messages = new MessageReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        for (const message of messages.feed(value ?? new Uint8Array(0), done)) this._onMessage(message);
        if (done) break;
      }
    } catch (error) {
      this._fail(error);
    }
  }

  _onMessage(message) {
    const type = message.type;
    if (this.state === "awaiting-welcome") {
      if (type === "welcome") return this._onWelcome(message);
      if (type === "error") {
        this._remoteErrorCode = message.code;
        this.emit("error", { code: message.code, message: message.message, remote: true });
        this._rejectWelcome(new ProtocolError(`refused: ${message.message}`, message.code));
        return;
      }
      throw new ProtocolError(`unexpected ${type} before welcome`, ErrorCode.PROTOCOL_ERROR);
    }
    switch (type) {
      case "event":
        if (typeof message.name !== "string") throw new ProtocolError("event without name", ErrorCode.MESSAGE_ERROR);
        this.stats.eventsReceived++;
        this.emit("event", { name: message.name, data: message.data ?? null });
        return;
      case "error":
        this._remoteErrorCode = message.code;
        this.emit("error", { code: message.code, message: message.message ?? "", remote: true });
        return;
      case "cancel":
        if (!Number.isInteger(message.turn_id) || message.turn_id < 0) {
          throw new ProtocolError("cancel: bad turn_id", ErrorCode.MESSAGE_ERROR);
        }
        this._cancel(message.turn_id, true);
        return;
      case "bye":
        this.emit("bye", { uplinkFrames: message.uplink_frames });
        this._byeReceived?.(message);
        return;
      case "welcome":
      case "hello":
        throw new ProtocolError(`unexpected ${type}`, ErrorCode.PROTOCOL_ERROR);
      default:
        throw new ProtocolError(`unknown control message type ${type}`, ErrorCode.UNKNOWN_MESSAGE);
    }
  }

  _onWelcome(message) {
    const codec = parseCodec(message.codec);
    if (!codec || codec.name !== "L16") {
      throw new ProtocolError(`unsupported codec ${message.codec}`, ErrorCode.UNSUPPORTED);
    }
    this.codec = codec;
    this.welcome = {
      sessionId: message.session_id,
      codec: message.codec,
      frameMs: message.frame_ms,
      uplink: message.uplink,
      serverId: message.server_id,
      resumed: Boolean(message.resumed),
      resumeToken: message.resume_token ?? null,
    };
    this.frameSamples = (codec.rate * message.frame_ms) / 1000;
    this.state = "active";
    this._resolveWelcome(message);
    this.emit("welcome", this.welcome);
  }

  async _acceptTurns() {
    const reader = this.transport.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this._readTurn(value);
      }
    } catch {
      // the session closed
    }
  }

  async _readTurn(readable) {
    const reader = readable.getReader();
    const parser = new TurnStreamReader();
    let turn = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (turn?.cancelled) return; // our barge-in cancelled the reader: the rest is moot
        if (value) this.stats.downlinkBytesReceived += value.length;
        const { header, frames } = parser.feed(value ?? new Uint8Array(0), done);
        if (header) {
          if (this.state !== "active") throw new ProtocolError("turn before welcome", ErrorCode.STREAM_ERROR);
          const turnId = parser.turnId;
          if (this.turns.has(turnId)) throw new ProtocolError(`turn ${turnId} opened twice`, ErrorCode.STREAM_ERROR);
          turn = { turnId, reader, cancelled: this.cancelledTurns.has(turnId), ended: false };
          this.turns.set(turnId, turn);
          this.stats.turns++;
          if (turn.cancelled) {
            await reader.cancel(cancelReason()).catch(() => {});
            return;
          }
          this.emit("turnstart", { turnId });
        }
        for (const frame of frames) {
          if (turn.cancelled) {
            this.stats.downlinkFramesDiscarded++;
            continue;
          }
          this.stats.downlinkFramesReceived++;
          this.emit("audio", {
            turnId: turn.turnId,
            seq: frame.seq,
            timestamp: frame.timestamp,
            samples: decodeL16(frame.payload),
          });
        }
        if (done) {
          if (turn && !turn.cancelled) {
            turn.ended = true;
            this.stats.turnsEnded++;
            this.emit("turnend", { turnId: turn.turnId });
          }
          return;
        }
      }
    } catch (error) {
      if (error instanceof ProtocolError) return this._fail(error);
      // RESET_STREAM from the server (its barge-in), or our own cancel, or the session closed.
      if (turn && !turn.cancelled && !turn.ended && this.state === "active") this._cancel(turn.turnId, true);
    }
  }

  /** Send one frame of 16-bit samples (Int16Array, frameMs at the codec rate). */
  sendAudio(samples, timestamp = this.timestamp) {
    if (this.state !== "active") return false;
    if (samples.length !== this.frameSamples) {
      // The server closes the session on any other size (FRAME_MISMATCH): refuse it here.
      throw new RangeError(`a frame is ${this.frameSamples} samples, not ${samples.length}`);
    }
    const payload = encodeL16(samples);
    const seq = this.seq;
    this.seq = (this.seq + 1) >>> 0;
    this.timestamp = (timestamp + samples.length) >>> 0;
    if (this._uplinkWriter) {
      // Reliable: every frame goes, but a stalled stream must not grow memory without bound.
      if (this._uplinkWriter.desiredSize !== null &&
          this._uplinkWriter.desiredSize < -this.options.maxQueuedFrames) {
        this.stats.uplinkFramesDropped++;
        return false;
      }
      const data = encodeFrame(seq, timestamp, payload);
      this._uplinkWriter.write(data).catch((error) => this._fail(error));
      this.stats.uplinkBytesSent += data.length;
    } else {
      const data = encodeDatagram(seq, timestamp, payload);
      this._datagramWriter.write(data).catch(() => { this.stats.uplinkFramesDropped++; });
      this.stats.uplinkBytesSent += data.length;
    }
    this.stats.uplinkFramesSent++;
    return true;
  }

  /** Send an application event, e.g. sendEvent("order.add", {item: "tea"}). */
  sendEvent(name, data = null) {
    if (this.state !== "active") throw new Error(`session is ${this.state}`);
    this.stats.eventsSent++;
    this._sendMessage({ type: "event", name, data });
  }

  /**
   * Barge-in: stop turn `turnId` now. Sends STOP_SENDING (by cancelling the stream's reader),
   * the `cancel` message, and emits `cancel` so the player drops the turn's frames.
   */
  cancelTurn(turnId) {
    if (this.state !== "active") return;
    this._cancel(turnId, false);
  }

  _cancel(turnId, byPeer) {
    const turn = this.turns.get(turnId);
    if (this.cancelledTurns.has(turnId) || turn?.ended) return;
    this.cancelledTurns.add(turnId);
    this.stats.turnsCancelled++;
    if (turn) {
      turn.cancelled = true;
      turn.reader.cancel(cancelReason()).catch(() => {});
    }
    if (!byPeer) this._sendMessage({ type: "cancel", turn_id: turnId });
    this.emit("cancel", { turnId, byPeer });
  }

  /** The turns that have started and neither ended nor been cancelled. */
  activeTurns() {
    return [...this.turns.values()].filter((t) => !t.ended && !t.cancelled).map((t) => t.turnId);
  }

  /** Finish: `bye` with the frame count, FIN on the uplink, wait for the server's `bye`, close. */
  async bye(timeoutMs = 3000) {
    if (this.state !== "active") return null;
    const answer = new Promise((resolve) => { this._byeReceived = resolve; });
    this._sendMessage({ type: "bye", uplink_frames: this.stats.uplinkFramesSent });
    await this._uplinkWriter?.close().catch(() => {});
    let reply = null;
    try {
      reply = await withTimeout(answer, timeoutMs, "bye");
    } catch {
      // close anyway
    }
    this.close();
    return reply;
  }

  /** Close the WebTransport session at once. */
  close(code = 0, reason = "") {
    if (this.state === "closed") return;
    this.state = "closing";
    try {
      this.transport?.close({ closeCode: code, reason });
    } catch {
      // already closed
    }
  }

  _fail(error) {
    if (this.state === "closed" || this.state === "closing") return;
    if (!(error instanceof ProtocolError) && !this._failDeferred) {
      // A stream or write failing is most often the session closing under it: let
      // `transport.closed` report the server's code and reason first (a short wait).
      this._failDeferred = true;
      const settled = this.transport.closed.then(() => {}, () => {});
      const grace = new Promise((resolve) => setTimeout(resolve, CLOSE_GRACE_MS));
      Promise.race([settled, grace]).then(() => this._fail(error));
      return;
    }
    const code = error instanceof ProtocolError ? error.code : ErrorCode.INTERNAL_ERROR;
    const message = String(error?.message ?? error);
    this.emit("error", { code, message, remote: false });
    this._rejectWelcome?.(error);
    if (error instanceof ProtocolError && this._controlWriter) {
      this._controlWriter.write(encodeMessage({ type: "error", code, message })).catch(() => {});
    }
    this.close(code, message.slice(0, 100));
  }

  _onClosed(code, reason) {
    if (this.state === "closed") return;
    const refused = this.state === "connecting" || this.state === "awaiting-welcome";
    const byUs = this.state === "closing";
    this.state = "closed";
    this.closeInfo = { code, reason };
    if (!byUs && code !== null && code !== ErrorCode.NO_ERROR && code !== this._remoteErrorCode) {
      // The server's reason for ending the session (a refusal, a protocol error): the close
      // capsule carries it, where the `error` message may never have been read.
      this.emit("error", { code, message: reason, remote: true });
    }
    const why = code === null ? reason : `${errorName(code)}: ${reason}`;
    this._rejectWelcome?.(new ProtocolError(`session ${refused ? "refused" : "closed"}: ${why}`,
                                            code ?? ErrorCode.INTERNAL_ERROR));
    this.emit("close", { code, reason });
  }

  /** Counters plus the transport's own statistics (RTT, packets) when the browser has them. */
  async getStats() {
    const out = { ...this.stats, state: this.state };
    try {
      const transport = await this.transport?.getStats?.();
      if (transport) {
        out.smoothedRttMs = transport.smoothedRtt ?? null;
        out.minRttMs = transport.minRtt ?? null;
        out.packetsSent = transport.packetsSent ?? null;
        out.packetsLost = transport.packetsLost ?? null;
      }
    } catch {
      // not available
    }
    return out;
  }
}

function cancelReason() {
  // Chromium turns streamErrorCode into STOP_SENDING's code (mapped into the HTTP/3 range).
  try {
    return new WebTransportError("barge-in", { streamErrorCode: ErrorCode.CANCELLED });
  } catch {
    return undefined;
  }
}

/** Open a session: resolves once `welcome` arrived (and the uplink stream is open). */
export async function connect(url, options = {}) {
  const session = new VoiceSession(url, options);
  await session.ready;
  return session;
}

/** Fetch `/config.json` from the page's server and connect with what it says. */
export async function connectFromConfig(configUrl = "/config.json", options = {}) {
  const response = await fetch(configUrl, { cache: "no-store" });
  if (!response.ok) throw new Error(`${configUrl}: HTTP ${response.status}`);
  const config = await response.json();
  const hashes = config.certificate_sha256 ? [config.certificate_sha256] : [];
  return connect(config.url, { serverCertificateHashes: hashes, ...options });
}

// ---------------------------------------------------------------------------------------
// Audio: microphone capture and turn playback.

/**
 * Capture the microphone into the session: getUserMedia, an AudioContext at the track's own
 * rate (so the only resampling is ours), and the capture worklet. Frames are sent while
 * `capture.talking` is true. `onFrame(frame)` sees every frame (for level meters).
 */
export async function startMicrophone(session, options = {}) {
  const rate = session.codec?.rate ?? 16000;
  const frameMs = session.welcome?.frameMs ?? 20;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    ...options.constraints,
  });
  const track = stream.getAudioTracks()[0];
  const trackRate = track.getSettings().sampleRate;
  const context = new AudioContext({ latencyHint: "interactive", ...(trackRate ? { sampleRate: trackRate } : {}) });
  await context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "quicvoice-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    processorOptions: { targetRate: rate, frameMs },
  });
  const capture = {
    context,
    node,
    stream,
    talking: false,
    info: null,
    stats: { framesCaptured: 0, framesSent: 0, lastRms: 0, deliveryMs: null, maxDeliveryMs: 0 },
    close() {
      node.port.onmessage = null;
      source.disconnect();
      for (const t of stream.getTracks()) t.stop();
      return context.close();
    },
  };
  node.port.onmessage = (event) => {
    const message = event.data;
    if (message.type === "ready") {
      capture.info = message;
      return;
    }
    if (message.type !== "frame") return;
    capture.stats.framesCaptured++;
    capture.stats.lastRms = message.rms;
    // How far the graph's clock has run since the frame's last sample: the hand-over from the
    // audio thread to this one (to within one render quantum, the clock's resolution).
    const delivery = Math.max(0, (context.currentTime - message.contextTime) * 1000);
    capture.stats.deliveryMs = delivery;
    capture.stats.maxDeliveryMs = Math.max(capture.stats.maxDeliveryMs, delivery);
    options.onFrame?.(message);
    if (capture.talking && session.state === "active") {
      if (session.sendAudio(message.samples, message.timestamp)) capture.stats.framesSent++;
    }
  };
  source.connect(node);
  await context.resume();
  return capture;
}

/**
 * The turn player: an AudioContext with the playback worklet. `attach(session)` plays every
 * turn of the session; `stats` follows the worklet's reports; events "turn-playing",
 * "turn-finished" and "stats" are dispatched on `player.events`.
 */
export async function createPlayer(options = {}) {
  const codecRate = options.codecRate ?? 16000;
  const context = options.context ?? new AudioContext({ latencyHint: "interactive" });
  await context.audioWorklet.addModule(new URL("./playback-worklet.js", import.meta.url));
  const node = new AudioWorkletNode(context, "quicvoice-playback", {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { codecRate, targetMs: options.targetMs ?? 60 },
  });
  node.connect(context.destination);
  const events = new EventTarget();
  const player = {
    context,
    node,
    events,
    info: null,
    stats: {},
    push(turnId, timestamp, samples) {
      node.port.postMessage({ type: "frame", turnId, timestamp, samples });
    },
    end(turnId) { node.port.postMessage({ type: "end", turnId }); },
    cancel(turnId) { node.port.postMessage({ type: "cancel", turnId }); },
    attach(session) {
      session.addEventListener("audio", (e) => player.push(e.detail.turnId, e.detail.timestamp, e.detail.samples));
      session.addEventListener("turnend", (e) => player.end(e.detail.turnId));
      session.addEventListener("cancel", (e) => player.cancel(e.detail.turnId));
    },
    close() { return context.close(); },
  };
  node.port.onmessage = (event) => {
    const message = event.data;
    if (message.type === "ready") player.info = message;
    else if (message.type === "stats") player.stats = message;
    events.dispatchEvent(new CustomEvent(message.type, { detail: message }));
  };
  await context.resume();
  return player;
}
