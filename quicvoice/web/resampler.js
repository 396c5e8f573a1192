// A streaming rational-ratio resampler: a Kaiser-windowed sinc low-pass applied in polyphase
// form, so only the taps that meet a real input sample are computed.
//
// For up/down = outputRate/inputRate in lowest terms, the prototype filter runs at
// up * inputRate; output sample m sits at input position m * down / up, and uses phase
// p = (m * down) mod up of the prototype. Its cutoff lies between the passband and stopband
// edges (by default 87.5 % and 100 % of the lower Nyquist), so nothing above the output
// Nyquist folds back (decimation) and no image survives (interpolation).

/** The modified Bessel function of the first kind, order 0 (power series). */
export function besselI0(x) {
  const q = (x * x) / 4;
  let term = 1;
  let sum = 1;
  for (let k = 1; k < 500; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

/** Kaiser's beta for a stopband attenuation in dB. */
export function kaiserBeta(attenuationDb) {
  if (attenuationDb > 50) return 0.1102 * (attenuationDb - 8.7);
  if (attenuationDb >= 21) {
    return 0.5842 * (attenuationDb - 21) ** 0.4 + 0.07886 * (attenuationDb - 21);
  }
  return 0;
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Rates must be positive integers (Hz); the ratio in lowest terms must have up <= maxPhases. */
export class Resampler {
  constructor(inputRate, outputRate, options = {}) {
    const {
      attenuationDb = 90,
      passbandHz = null,
      stopbandHz = null,
      maxPhases = 1024,
    } = options;
    if (!Number.isInteger(inputRate) || !Number.isInteger(outputRate) ||
        inputRate <= 0 || outputRate <= 0) {
      throw new RangeError(`resampler rates must be positive integers: ${inputRate} -> ${outputRate}`);
    }
    const divisor = gcd(inputRate, outputRate);
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.up = outputRate / divisor;
    this.down = inputRate / divisor;
    if (this.up > maxPhases) {
      throw new RangeError(`resampling ${inputRate} -> ${outputRate} Hz needs ${this.up} phases`);
    }
    const nyquist = Math.min(inputRate, outputRate) / 2;
    const stop = stopbandHz ?? nyquist;
    const pass = passbandHz ?? nyquist * 0.875;
    const prototypeRate = this.up * inputRate;
    const transition = (2 * Math.PI * (stop - pass)) / prototypeRate;
    const order = Math.ceil((attenuationDb - 7.95) / (2.285 * transition));
    this.taps = Math.max(2, Math.ceil((order + 1) / this.up));
    const length = this.taps * this.up;
    const cutoff = (pass + stop) / 2 / prototypeRate; // cycles per prototype sample
    const beta = kaiserBeta(attenuationDb);
    const i0Beta = besselI0(beta);
    const centre = (length - 1) / 2;
    const prototype = new Float64Array(length);
    for (let n = 0; n < length; n++) {
      const t = n - centre;
      const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
      const ratio = t / centre;
      const window = besselI0(beta * Math.sqrt(Math.max(0, 1 - ratio * ratio))) / i0Beta;
      prototype[n] = this.up * sinc * window;
    }
    // phases[p][k] = prototype[p + k * up]: the taps that meet input samples x[i - k].
    this.phases = [];
    for (let p = 0; p < this.up; p++) {
      const taps = new Float64Array(this.taps);
      for (let k = 0; k < this.taps; k++) taps[k] = prototype[p + k * this.up];
      this.phases.push(taps);
    }
    /** Delay of the filter, in seconds (linear phase: half its length). */
    this.delaySeconds = centre / prototypeRate;
    this.history = this.taps - 1;
    this.buffer = new Float64Array(this.history + 4096);
    this.index = this.history; // buffer index of the next output's newest input sample
    this.phase = 0;
  }

  /** Resample a block (any length); returns a Float32Array of the outputs it completes. */
  process(input) {
    const total = this.history + input.length;
    if (total > this.buffer.length) {
      const bigger = new Float64Array(total * 2);
      bigger.set(this.buffer.subarray(0, this.history));
      this.buffer = bigger;
    }
    const buffer = this.buffer;
    buffer.set(input, this.history);
    const output = new Float32Array(Math.ceil(((input.length + 1) * this.up) / this.down) + 1);
    const { up, down, taps } = this;
    let count = 0;
    let index = this.index;
    let phase = this.phase;
    while (index < total) {
      const coefficients = this.phases[phase];
      let sum = 0;
      for (let k = 0; k < taps; k++) sum += coefficients[k] * buffer[index - k];
      output[count++] = sum;
      phase += down;
      index += Math.floor(phase / up);
      phase %= up;
    }
    buffer.copyWithin(0, total - this.history, total);
    this.index = index - (total - this.history);
    this.phase = phase;
    return output.subarray(0, count);
  }

  /** Forget all input so far (the next block starts from silence). */
  reset() {
    this.buffer.fill(0);
    this.index = this.history;
    this.phase = 0;
  }
}
