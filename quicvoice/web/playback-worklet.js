// AudioWorklet processor "quicvoice-playback": the playout buffer for response turns.
//
// Frames arrive at the codec rate (16 kHz by default) tagged with their turn and timestamp;
// turns play one after another, in turn-ID order, each in time: a timestamp gap inside a turn
// plays as silence, overlapping or late samples are dropped. A turn starts playing once
// `targetMs` of it is buffered (or it has ended), and an underrun (the network fell behind)
// plays silence until `targetMs` is buffered again. The 16 kHz stream is resampled to the
// context rate by the polyphase FIR resampler.
//
// processorOptions: { codecRate = 16000, targetMs = 60, maxBufferedSeconds = 120 }.
// Messages in:  { type: "frame", turnId, timestamp, samples: Int16Array }
//               { type: "end", turnId }     the turn's stream finished: play out what is left
//               { type: "cancel", turnId }  barge-in: drop the turn now
// Messages out: { type: "turn-playing", turnId, contextTime }  first sample of a turn audible
//               { type: "turn-finished", turnId, contextTime }
//               { type: "stats", ... } about every 50 ms

import { Resampler } from "./resampler.js";

const STATS_EVERY_SECONDS = 0.05;
const MAX_GAP_SECONDS = 1;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { codecRate = 16000, targetMs = 60, maxBufferedSeconds = 120 } =
      options.processorOptions ?? {};
    this.codecRate = codecRate;
    this.targetSamples = Math.round((codecRate * targetMs) / 1000);
    this.maxBuffered = Math.round(codecRate * maxBufferedSeconds);
    this.resampler = new Resampler(codecRate, sampleRate);
    this.block = Math.ceil((128 * this.resampler.down) / this.resampler.up);
    this.fifo = new Float32Array(4096);
    this.fifoStart = 0;
    this.fifoEnd = 0;
    this.turns = new Map();
    this.finished = new Set();
    this.stats = {
      framesReceived: 0,
      framesPlayed: 0,
      framesDropped: 0,
      samplesPlayed: 0,
      sumSquares: 0,
      peak: 0,
      underruns: 0,
      turnsPlayed: 0,
      turnsFinished: 0,
      turnsCancelled: 0,
    };
    this.nextStats = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
    this.port.postMessage({
      type: "ready",
      outputRate: sampleRate,
      codecRate,
      taps: this.resampler.taps,
      phases: this.resampler.up,
      filterDelayMs: this.resampler.delaySeconds * 1000,
    });
  }

  turn(turnId) {
    let turn = this.turns.get(turnId);
    if (!turn && !this.finished.has(turnId)) {
      turn = { queue: [], buffered: 0, expected: null, ended: false, playing: false, started: false };
      this.turns.set(turnId, turn);
    }
    return turn;
  }

  onMessage(message) {
    if (!message || typeof message.turnId !== "number") return;
    if (message.type === "frame") {
      this.stats.framesReceived++;
      const turn = this.turn(message.turnId);
      if (!turn || turn.ended) {
        this.stats.framesDropped++;
        return;
      }
      this.enqueue(turn, message.samples, message.timestamp >>> 0);
    } else if (message.type === "end") {
      const turn = this.turn(message.turnId);
      if (turn) turn.ended = true;
    } else if (message.type === "cancel") {
      if (!this.finished.has(message.turnId)) this.stats.turnsCancelled++;
      this.turns.delete(message.turnId);
      this.finished.add(message.turnId);
    }
  }

  enqueue(turn, int16, timestamp) {
    let samples = Float32Array.from(int16, (value) => value / 32768);
    if (turn.expected !== null) {
      const gap = (timestamp - turn.expected) | 0; // signed 32-bit: timestamps wrap
      if (gap > 0 && gap <= MAX_GAP_SECONDS * this.codecRate) {
        turn.queue.push({ samples: new Float32Array(gap), offset: 0, silence: true });
        turn.buffered += gap;
      } else if (gap < 0) {
        if (-gap >= samples.length) {
          this.stats.framesDropped++;
          return;
        }
        samples = samples.subarray(-gap);
        timestamp = turn.expected;
      }
    }
    if (turn.buffered + samples.length > this.maxBuffered) {
      this.stats.framesDropped++;
      return;
    }
    turn.queue.push({ samples, offset: 0, silence: false });
    turn.buffered += samples.length;
    turn.expected = (timestamp + samples.length) >>> 0;
  }

  currentTurn() {
    let best = null;
    for (const id of this.turns.keys()) if (best === null || id < best) best = id;
    return best;
  }

  /** The next `count` samples at the codec rate: turn audio, or silence. */
  pull(count) {
    const out = new Float32Array(count);
    let filled = 0;
    while (filled < count) {
      const turnId = this.currentTurn();
      if (turnId === null) break;
      const turn = this.turns.get(turnId);
      if (!turn.playing) {
        if (turn.buffered < this.targetSamples && !turn.ended) break;
        turn.playing = true;
      }
      if (turn.queue.length === 0) {
        if (turn.ended) {
          this.turns.delete(turnId);
          this.finished.add(turnId);
          this.stats.turnsFinished++;
          this.port.postMessage({ type: "turn-finished", turnId, contextTime: currentTime });
          continue;
        }
        this.stats.underruns++;
        turn.playing = false;
        break;
      }
      if (!turn.started) {
        turn.started = true;
        this.stats.turnsPlayed++;
        const ahead = (this.fifoEnd - this.fifoStart) / sampleRate + filled / this.codecRate;
        this.port.postMessage({
          type: "turn-playing",
          turnId,
          contextTime: currentTime + ahead + this.resampler.delaySeconds,
        });
      }
      const head = turn.queue[0];
      const take = Math.min(count - filled, head.samples.length - head.offset);
      const chunk = head.samples.subarray(head.offset, head.offset + take);
      out.set(chunk, filled);
      if (!head.silence) {
        for (let i = 0; i < take; i++) {
          const value = chunk[i];
          this.stats.sumSquares += value * value;
          const magnitude = Math.abs(value);
          if (magnitude > this.stats.peak) this.stats.peak = magnitude;
        }
        this.stats.samplesPlayed += take;
      }
      filled += take;
      head.offset += take;
      turn.buffered -= take;
      if (head.offset === head.samples.length) {
        turn.queue.shift();
        if (!head.silence) this.stats.framesPlayed++;
      }
    }
    return out;
  }

  process(inputs, outputs) {
    const output = outputs[0];
    const length = output[0].length;
    while (this.fifoEnd - this.fifoStart < length) {
      const resampled = this.resampler.process(this.pull(this.block));
      if (this.fifoEnd + resampled.length > this.fifo.length) {
        this.fifo.copyWithin(0, this.fifoStart, this.fifoEnd);
        this.fifoEnd -= this.fifoStart;
        this.fifoStart = 0;
      }
      this.fifo.set(resampled, this.fifoEnd);
      this.fifoEnd += resampled.length;
    }
    const samples = this.fifo.subarray(this.fifoStart, this.fifoStart + length);
    for (const channel of output) channel.set(samples);
    this.fifoStart += length;
    if (currentTime >= this.nextStats) {
      this.nextStats = currentTime + STATS_EVERY_SECONDS;
      this.postStats();
    }
    return true;
  }

  postStats() {
    let buffered = 0;
    for (const turn of this.turns.values()) buffered += turn.buffered;
    const { sumSquares, samplesPlayed, ...counts } = this.stats;
    this.port.postMessage({
      type: "stats",
      ...counts,
      samplesPlayed,
      rms: samplesPlayed ? Math.sqrt(sumSquares / samplesPlayed) : 0,
      bufferedMs: (buffered / this.codecRate) * 1000,
      currentTurn: this.currentTurn(),
      contextTime: currentTime,
    });
  }
}

registerProcessor("quicvoice-playback", PlaybackProcessor);
