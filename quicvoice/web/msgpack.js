// A small MessagePack codec for the control messages of the quicvoice protocol.
//
// Types: nil, bool, int (Number when it is a safe integer, else BigInt), float64 (float32 is
// decoded too), str, bin (Uint8Array), array and map (plain objects with string keys; a Map
// is encoded as a map and non-string keys are decoded into a Map). Ext types are refused.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** Nesting deeper than this is refused, so a hostile message cannot exhaust the stack. */
export const MAX_DEPTH = 64;

export class MsgpackError extends Error {}

class Writer {
  constructor() {
    this.bytes = new Uint8Array(256);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(count) {
    if (this.length + count <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + count) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.bytes.subarray(0, this.length));
    this.bytes = bigger;
    this.view = new DataView(bigger.buffer);
  }

  u8(value) { this.reserve(1); this.bytes[this.length++] = value; }
  u16(value) { this.reserve(2); this.view.setUint16(this.length, value); this.length += 2; }
  u32(value) { this.reserve(4); this.view.setUint32(this.length, value); this.length += 4; }
  u64(value) { this.reserve(8); this.view.setBigUint64(this.length, value); this.length += 8; }
  i64(value) { this.reserve(8); this.view.setBigInt64(this.length, value); this.length += 8; }
  f64(value) { this.reserve(9); this.u8(0xcb); this.view.setFloat64(this.length, value); this.length += 8; }
  raw(bytes) { this.reserve(bytes.length); this.bytes.set(bytes, this.length); this.length += bytes.length; }

  result() { return this.bytes.slice(0, this.length); }
}

function encodeInteger(w, value) {
  // value is a BigInt or an integral Number.
  if (typeof value === "number") {
    if (value >= 0) {
      if (value < 0x80) return w.u8(value);
      if (value < 0x100) { w.u8(0xcc); return w.u8(value); }
      if (value < 0x10000) { w.u8(0xcd); return w.u16(value); }
      if (value < 0x100000000) { w.u8(0xce); return w.u32(value); }
    } else {
      if (value >= -32) return w.u8(value & 0xff);
      if (value >= -0x80) { w.u8(0xd0); return w.u8(value & 0xff); }
      if (value >= -0x8000) { w.u8(0xd1); return w.u16(value & 0xffff); }
      if (value >= -0x80000000) { w.u8(0xd2); return w.u32(value >>> 0); }
    }
    value = BigInt(value);
  }
  if (value >= 0n) {
    if (value >= 1n << 64n) throw new MsgpackError("integer too large for msgpack");
    if (value < 0x100000000n) return encodeInteger(w, Number(value));
    w.u8(0xcf);
    return w.u64(value);
  }
  if (value < -(1n << 63n)) throw new MsgpackError("integer too small for msgpack");
  if (value >= -0x80000000n) return encodeInteger(w, Number(value));
  w.u8(0xd3);
  return w.i64(value);
}

function encodeLength(w, length, fix, fixLimit, codes) {
  if (fix !== null && length < fixLimit) return w.u8(fix | length);
  if (codes[0] !== null && length < 0x100) { w.u8(codes[0]); return w.u8(length); }
  if (length < 0x10000) { w.u8(codes[1]); return w.u16(length); }
  if (length < 0x100000000) { w.u8(codes[2]); return w.u32(length); }
  throw new MsgpackError("object too long for msgpack");
}

function encodeValue(w, value, depth) {
  if (depth > MAX_DEPTH) throw new MsgpackError("nesting too deep");
  if (value === null || value === undefined) return w.u8(0xc0);
  switch (typeof value) {
    case "boolean":
      return w.u8(value ? 0xc3 : 0xc2);
    case "bigint":
      return encodeInteger(w, value);
    case "number":
      if (Number.isSafeInteger(value) && !Object.is(value, -0)) return encodeInteger(w, value);
      return w.f64(value);
    case "string": {
      const bytes = textEncoder.encode(value);
      encodeLength(w, bytes.length, 0xa0, 32, [0xd9, 0xda, 0xdb]);
      return w.raw(bytes);
    }
    default:
      break;
  }
  if (value instanceof Uint8Array || value instanceof ArrayBuffer) {
    const bytes = value instanceof Uint8Array ? value : new Uint8Array(value);
    encodeLength(w, bytes.length, null, 0, [0xc4, 0xc5, 0xc6]);
    return w.raw(bytes);
  }
  if (Array.isArray(value)) {
    encodeLength(w, value.length, 0x90, 16, [null, 0xdc, 0xdd]);
    for (const item of value) encodeValue(w, item, depth + 1);
    return;
  }
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
  const kept = entries.filter(([, v]) => v !== undefined);
  encodeLength(w, kept.length, 0x80, 16, [null, 0xde, 0xdf]);
  for (const [key, item] of kept) {
    encodeValue(w, key, depth + 1);
    encodeValue(w, item, depth + 1);
  }
}

/** Encode a value as MessagePack; returns a Uint8Array. */
export function encode(value) {
  const w = new Writer();
  encodeValue(w, value, 0);
  return w.result();
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.offset = 0;
  }

  need(count) {
    if (this.offset + count > this.bytes.length) throw new MsgpackError("truncated msgpack");
    const at = this.offset;
    this.offset += count;
    return at;
  }

  u8() { return this.bytes[this.need(1)]; }
  u16() { return this.view.getUint16(this.need(2)); }
  u32() { return this.view.getUint32(this.need(4)); }
  take(count) { const at = this.need(count); return this.bytes.slice(at, at + count); }
}

function integer(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(big) : big;
}

function decodeString(r, length) {
  const at = r.need(length);
  try {
    return textDecoder.decode(r.bytes.subarray(at, at + length));
  } catch {
    throw new MsgpackError("invalid UTF-8 in msgpack string");
  }
}

function decodeArray(r, length, depth) {
  if (length > r.bytes.length - r.offset) throw new MsgpackError("truncated msgpack");
  const out = new Array(length);
  for (let i = 0; i < length; i++) out[i] = decodeValue(r, depth + 1);
  return out;
}

function decodeMap(r, length, depth) {
  if (length * 2 > r.bytes.length - r.offset) throw new MsgpackError("truncated msgpack");
  const keys = [];
  const values = [];
  let plain = true;
  for (let i = 0; i < length; i++) {
    const key = decodeValue(r, depth + 1);
    if (typeof key !== "string") plain = false;
    keys.push(key);
    values.push(decodeValue(r, depth + 1));
  }
  if (!plain) return new Map(keys.map((key, i) => [key, values[i]]));
  const out = {};
  keys.forEach((key, i) => {
    // defineProperty, not assignment: a "__proto__" key stays an ordinary key.
    Object.defineProperty(out, key, {
      value: values[i], enumerable: true, writable: true, configurable: true,
    });
  });
  return out;
}

function decodeValue(r, depth) {
  if (depth > MAX_DEPTH) throw new MsgpackError("nesting too deep");
  const code = r.u8();
  if (code < 0x80) return code;
  if (code >= 0xe0) return code - 0x100;
  if (code >= 0xa0 && code <= 0xbf) return decodeString(r, code & 0x1f);
  if (code >= 0x90 && code <= 0x9f) return decodeArray(r, code & 0x0f, depth);
  if (code >= 0x80 && code <= 0x8f) return decodeMap(r, code & 0x0f, depth);
  switch (code) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.take(r.u8());
    case 0xc5: return r.take(r.u16());
    case 0xc6: return r.take(r.u32());
    case 0xca: return r.view.getFloat32(r.need(4));
    case 0xcb: return r.view.getFloat64(r.need(8));
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: return integer(r.view.getBigUint64(r.need(8)));
    case 0xd0: return r.view.getInt8(r.need(1));
    case 0xd1: return r.view.getInt16(r.need(2));
    case 0xd2: return r.view.getInt32(r.need(4));
    case 0xd3: return integer(r.view.getBigInt64(r.need(8)));
    case 0xd9: return decodeString(r, r.u8());
    case 0xda: return decodeString(r, r.u16());
    case 0xdb: return decodeString(r, r.u32());
    case 0xdc: return decodeArray(r, r.u16(), depth);
    case 0xdd: return decodeArray(r, r.u32(), depth);
    case 0xde: return decodeMap(r, r.u16(), depth);
    case 0xdf: return decodeMap(r, r.u32(), depth);
    default:
      throw new MsgpackError(`unsupported msgpack type 0x${code.toString(16)}`);
  }
}

/** Decode exactly one MessagePack value that fills `bytes` (a Uint8Array). */
export function decode(bytes) {
  const r = new Reader(bytes);
  const value = decodeValue(r, 0);
  if (r.offset !== bytes.length) throw new MsgpackError("trailing bytes after msgpack value");
  return value;
}
