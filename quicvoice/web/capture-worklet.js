// AudioWorklet processor "quicvoice-capture": microphone at the context rate -> 16-bit PCM
// frames at the codec rate (default 16 kHz, 20 ms), through the polyphase FIR resampler.
//
// processorOptions: { targetRate = 16000, frameMs = 20 }.
// Posts { type: "frame", samples: Int16Array, timestamp, contextTime, rms } per frame, where
// timestamp counts samples at targetRate since the processor started and contextTime is the
// AudioContext time just after the frame's last input sample.
// Accepts { type: "reset" } (drop the partial frame and the filter state).

import { Resampler } from "./resampler.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameMs = 20 } = options.processorOptions ?? {};
    this.resampler = new Resampler(sampleRate, targetRate);
    this.frameSamples = Math.round((targetRate * frameMs) / 1000);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.timestamp = 0;
    this.energy = 0;
    this.mono = new Float32Array(128);
    this.port.onmessage = (event) => {
      if (event.data?.type === "reset") {
        this.resampler.reset();
        this.timestamp += this.fill;
        this.fill = 0;
        this.energy = 0;
      }
    };
    this.port.postMessage({
      type: "ready",
      inputRate: sampleRate,
      targetRate,
      taps: this.resampler.taps,
      phases: this.resampler.up,
      filterDelayMs: this.resampler.delaySeconds * 1000,
    });
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const length = channels[0].length;
    if (this.mono.length !== length) this.mono = new Float32Array(length);
    const mono = this.mono;
    if (channels.length === 1) {
      mono.set(channels[0]);
    } else {
      mono.fill(0);
      for (const channel of channels) for (let i = 0; i < length; i++) mono[i] += channel[i];
      for (let i = 0; i < length; i++) mono[i] /= channels.length;
    }
    const output = this.resampler.process(mono);
    for (let i = 0; i < output.length; i++) {
      const value = Math.max(-1, Math.min(1, output[i]));
      this.energy += value * value;
      this.frame[this.fill++] = Math.round(value * 32767);
      if (this.fill === this.frameSamples) {
        const samples = this.frame;
        this.port.postMessage(
          {
            type: "frame",
            samples,
            timestamp: this.timestamp >>> 0,
            contextTime: currentTime + length / sampleRate,
            rms: Math.sqrt(this.energy / this.frameSamples),
          },
          [samples.buffer],
        );
        this.timestamp += this.frameSamples;
        this.frame = new Int16Array(this.frameSamples);
        this.fill = 0;
        this.energy = 0;
      }
    }
    return true;
  }
}

registerProcessor("quicvoice-capture", CaptureProcessor);
