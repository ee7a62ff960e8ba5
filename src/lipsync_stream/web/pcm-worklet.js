// Microphone capture: downsample the context's rate to 16 kHz mono PCM16, post 100 ms at a time.
class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;
    this.pos = 0;
    this.out = new Int16Array(1600);
    this.n = 0;
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    // Average the input samples that fall into each output sample (a box filter: no aliasing of speech).
    for (let i = 0; i < input.length; i++) {
      this.acc = (this.acc || 0) + input[i];
      this.cnt = (this.cnt || 0) + 1;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        const v = Math.max(-1, Math.min(1, this.acc / this.cnt));
        this.out[this.n++] = v < 0 ? v * 32768 : v * 32767;
        this.acc = 0; this.cnt = 0;
        if (this.n === this.out.length) {
          this.port.postMessage(this.out.buffer.slice(0));
          this.n = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm16-capture", Pcm16Capture);
