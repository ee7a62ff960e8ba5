// The browser client: streams PCM16 16 kHz to /LipsyncStream, draws the frames, plays their audio.
// A frame is drawn when its own audio starts playing (Web Audio's clock), so picture and sound
// stay together whatever the network does. window.lipsyncStats is kept up to date for tests.
"use strict";

const SAMPLE_RATE = 16000;
const LEAD_S = 0.25; // audio is scheduled this far ahead of "now" when a stream (re)starts
const canvas = document.getElementById("screen");
const g = canvas.getContext("2d");
const statusEl = document.getElementById("status");
const statsEl = document.getElementById("stats");
const buttons = { mic: document.getElementById("mic"), demo: document.getElementById("demo"), stop: document.getElementById("stop"), sound: document.getElementById("sound") };
const fileInput = document.getElementById("file");
const params = new URLSearchParams(location.search);
if (params.get("character")) document.getElementById("character").value = params.get("character");

// framesDropped: frames that came too late to be drawn in time (a slow machine draws only the
// newest of several due frames, so the picture stays with its sound) or that would not decode.
const stats = (window.lipsyncStats = { framesShown: 0, framesDropped: 0, framesReceived: 0, audioSeconds: 0, skewMs: [], done: false, error: null });

let ctx = null; // AudioContext
let session = null;

// One clock for drawing: the wall clock until the browser lets sound play (a stock browser keeps
// an AudioContext suspended until the first click), then Web Audio's clock, shifted so that the
// time goes on without a jump. Frames are drawn from the start either way.
const wallStart = performance.now();
let clockOffset = 0; // audio time + clockOffset = now(), once sound runs
function wallNow() {
  return (performance.now() - wallStart) / 1000;
}
function audioNow() {
  return ctx.currentTime + (ctx.outputLatency || 0);
}
function now() {
  if (ctx && ctx.state === "running") return audioNow() + clockOffset;
  return wallNow();
}

function audioContext() {
  if (!ctx) {
    ctx = new AudioContext({ latencyHint: "interactive" });
    ctx.onstatechange = () => {
      if (ctx.state === "running") clockOffset = wallNow() - audioNow();
      buttons.sound.style.display = ctx.state === "running" ? "none" : "inline-block";
    };
    if (ctx.state === "running") clockOffset = wallNow() - audioNow();
  }
  return ctx;
}
function clockIsAudio() {
  return !!ctx && ctx.state === "running";
}

function setStatus(text) {
  statusEl.textContent = text || "";
}

function parseFrame(buf) {
  const v = new DataView(buf);
  const tag = String.fromCharCode(...new Uint8Array(buf, 0, 5));
  if (tag !== "VIDEO") throw new Error("not a frame message");
  const L = v.getInt32(5, true);
  const index = v.getInt32(9, true);
  const image = new Uint8Array(buf, 21, L - 12);
  let pcm = new Int16Array(0);
  const end = 9 + L;
  if (end < buf.byteLength) {
    const A = v.getInt32(end + 5, true);
    pcm = new Int16Array(buf.slice(end + 9, end + 9 + A));
  }
  return { index, image, pcm };
}

// A server with API keys: the page's URL carries a key (#key=...) or a session token
// (#token=...) in its fragment, which browsers never send to servers (no key in any log). A key
// is traded for a single-use token per session (POST /startAudioToVideoSession); the key itself
// never travels on the websocket.
const secrets = new URLSearchParams(location.hash.slice(1));
async function firstMessage(fields) {
  const token = secrets.get("token");
  if (token) {
    secrets.delete("token"); // single use
    return { session_token: token };
  }
  const key = secrets.get("key");
  if (!key) return fields;
  const res = await fetch("startAudioToVideoSession", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ apiKey: key, ...fields }),
  });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`session token refused: ${answer.error || res.status}: ${answer.detail || ""}`);
  return { session_token: answer.session_token };
}

class Session {
  constructor(character) {
    this.queue = []; // {index, bitmap, at}
    this.nextAt = null; // when the next frame's audio starts
    this.clockIsAudio = clockIsAudio();
    this.closed = false;
    this.shownTimes = [];
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    this.ws = new WebSocket(scheme + location.host + "/LipsyncStream");
    this.ws.binaryType = "arraybuffer";
    const fields = { video_reference_url: character, isJPG: true, syncAudio: true };
    const first = firstMessage(fields); // asks for a session token meanwhile, when there is a key
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => {
        first.then((message) => {
          this.ws.send(JSON.stringify(message));
          resolve();
        }, (err) => {
          stats.error = err.message;
          setStatus(err.message);
          this.ws.close();
          reject(err);
        });
      };
      this.ws.onerror = () => reject(new Error("cannot connect to the server"));
    });
    this.ws.onmessage = (ev) => this.onMessage(ev.data);
    this.ws.onclose = (ev) => {
      this.closed = true;
      if (!stats.done && !stats.error && ev.code !== 1000) setStatus(`connection closed (${ev.code})`);
      setButtons(false);
    };
  }

  onMessage(data) {
    if (typeof data === "string") {
      if (data === "DONE") {
        stats.done = true;
        setStatus("done");
        return;
      }
      try {
        const err = JSON.parse(data);
        stats.error = err.error + ": " + err.detail;
      } catch (e) {
        stats.error = data;
      }
      setStatus("server error: " + stats.error);
      return;
    }
    const frame = parseFrame(data);
    stats.framesReceived += 1;
    stats.audioSeconds += frame.pcm.length / SAMPLE_RATE;
    const t = now();
    if (this.nextAt === null || this.nextAt < t) this.nextAt = t + LEAD_S; // (re)start with a small buffer
    const at = this.nextAt;
    this.nextAt += frame.pcm.length / SAMPLE_RATE || 1 / 30;
    if (frame.pcm.length && clockIsAudio()) {
      const c = audioContext();
      const buffer = c.createBuffer(1, frame.pcm.length, SAMPLE_RATE);
      const ch = buffer.getChannelData(0);
      for (let i = 0; i < frame.pcm.length; i++) ch[i] = frame.pcm[i] / 32768;
      const src = c.createBufferSource();
      src.buffer = buffer;
      src.connect(c.destination);
      src.start(at - clockOffset - (c.outputLatency || 0));
    }
    const item = { index: frame.index, at, bitmap: null, failed: false };
    this.queue.push(item);
    createImageBitmap(new Blob([frame.image], { type: "image/jpeg" })).then(
      (bmp) => (item.bitmap = bmp),
      () => (item.failed = true), // skipped when due, so one bad frame does not stop the rest
    );
  }

  sendPcm(int16) {
    for (let i = 0; i < int16.length; i += 4000) {
      this.ws.send(int16.slice(i, i + 4000).buffer);
    }
  }

  finish() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send("DONE");
  }

  close() {
    if (this.micStop) this.micStop();
    try {
      this.ws.close(1000);
    } catch (e) {}
  }

  draw() {
    const t = now();
    let due = null;
    while (this.queue.length && this.queue[0].at <= t && (this.queue[0].bitmap || this.queue[0].failed)) {
      const next = this.queue.shift();
      if (next.failed) {
        stats.framesDropped += 1;
        continue;
      }
      if (due) {
        due.bitmap.close();
        stats.framesDropped += 1;
      }
      due = next;
    }
    if (!due) return;
    g.drawImage(due.bitmap, 0, 0, canvas.width, canvas.height);
    due.bitmap.close();
    stats.framesShown += 1;
    stats.skewMs.push((t - due.at) * 1000);
    if (stats.skewMs.length > 2000) stats.skewMs.shift();
    this.shownTimes.push(performance.now());
    if (this.shownTimes.length > 31) this.shownTimes.shift();
  }
}

function percentile(values, p) {
  if (!values.length) return 0;
  const s = values.map(Math.abs).sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

function loop() {
  if (session) {
    session.draw();
    const times = session.shownTimes;
    const fps = times.length > 1 ? ((times.length - 1) * 1000) / (times[times.length - 1] - times[0]) : 0;
    const ahead = session.nextAt === null ? 0 : Math.max(0, session.nextAt - now());
    stats.fps = fps;
    stats.skewMsP95 = percentile(stats.skewMs, 95);
    statsEl.textContent =
      `fps ${fps.toFixed(1)}   frames ${stats.framesShown}/${stats.framesReceived} (${stats.framesDropped} late)   buffer ${session.queue.length} frames, ${ahead.toFixed(2)} s\n` +
      `audio ${stats.audioSeconds.toFixed(2)} s   a/v skew p95 ${stats.skewMsP95.toFixed(1)} ms   clock ${clockIsAudio() ? "audio" : "wall (no sound yet)"}`;
  }
  requestAnimationFrame(loop);
}
requestAnimationFrame(loop);

function setButtons(running) {
  buttons.mic.disabled = running;
  buttons.demo.disabled = running;
  buttons.stop.disabled = !running;
}

// Ask for sound without waiting: a browser that blocks it until a click never settles resume(),
// and nothing may wait on that. "Click for sound" shows until it runs.
function tryStartAudio() {
  const c = audioContext();
  if (c.state !== "running") c.resume().catch(() => {});
  buttons.sound.style.display = c.state === "running" ? "none" : "inline-block";
}

// Each start takes a new number; a start that is overtaken by a later one (a second click while
// the first is still fetching or connecting) gives up, so there is exactly one session per start.
let starts = 0;

async function start(prepare) {
  const mine = ++starts;
  setButtons(true);
  tryStartAudio();
  const input = prepare ? await prepare() : null;
  if (mine !== starts) return null;
  if (session) session.close();
  Object.assign(stats, { framesShown: 0, framesDropped: 0, framesReceived: 0, audioSeconds: 0, skewMs: [], done: false, error: null });
  setStatus("");
  const s = (session = new Session(document.getElementById("character").value.trim() || "default"));
  try {
    await s.opened;
  } catch (e) {
    if (mine === starts) throw e;
    return null;
  }
  if (mine !== starts) {
    s.close();
    return null;
  }
  return { session: s, input };
}

async function toPcm16(arrayBuffer) {
  // Decode at the context's rate, then resample to 16 kHz mono with an offline context.
  const decoded = await audioContext().decodeAudioData(arrayBuffer);
  const frames = Math.ceil(decoded.duration * SAMPLE_RATE);
  const off = new OfflineAudioContext(1, frames, SAMPLE_RATE);
  const src = off.createBufferSource();
  src.buffer = decoded;
  src.connect(off.destination);
  src.start();
  const rendered = await off.startRendering();
  const f = rendered.getChannelData(0);
  const out = new Int16Array(f.length);
  for (let i = 0; i < f.length; i++) {
    const v = Math.max(-1, Math.min(1, f[i]));
    out[i] = v < 0 ? v * 32768 : v * 32767;
  }
  return out;
}

async function speak(getAudio) {
  try {
    const started = await start(async () => toPcm16(await getAudio()));
    if (!started) return; // a later start took over
    started.session.sendPcm(started.input); // all at once: the server paces the frames
    started.session.finish();
  } catch (e) {
    setStatus(String(e));
    stats.error = String(e);
    setButtons(false);
  }
}

function speakOrStream(getAudio) {
  if (!useWebRtc) return speak(getAudio);
  return webrtcSpeak(getAudio).catch((e) => {
    stats.error = String(e);
    setStatus(String(e));
    setButtons(false);
  });
}

function demo() {
  return speakOrStream(async () => (await fetch("sample.flac")).arrayBuffer());
}

buttons.demo.onclick = demo;
buttons.stop.onclick = () => session && session.close();
buttons.sound.onclick = tryStartAudio;
fileInput.onchange = async () => {
  const file = fileInput.files[0];
  fileInput.value = "";
  if (file) await speakOrStream(() => file.arrayBuffer());
};
buttons.mic.onclick = async () => {
  if (useWebRtc) {
    return webrtcMicrophone().catch((e) => {
      stats.error = String(e);
      setStatus("microphone: " + e);
      setButtons(false);
    });
  }
  try {
    const c = audioContext();
    await c.audioWorklet.addModule("pcm-worklet.js");
    const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    const started = await start();
    if (!started) {
      media.getTracks().forEach((t) => t.stop());
      return;
    }
    const s = started.session;
    const node = new AudioWorkletNode(c, "pcm16-capture");
    const input = c.createMediaStreamSource(media);
    input.connect(node);
    node.port.onmessage = (ev) => s.ws.readyState === WebSocket.OPEN && s.ws.send(ev.data);
    s.micStop = () => {
      input.disconnect();
      node.disconnect();
      media.getTracks().forEach((t) => t.stop());
      s.finish();
    };
    setStatus("listening…");
  } catch (e) {
    setStatus("microphone: " + e);
  }
};

// ?transport=webrtc: the speech goes as an audio track, the picture and its audio come back as
// tracks of one stream (the browser keeps them in sync from their RTP timestamps); DONE, errors
// and the close come on a data channel. window.lipsyncStats also gets the video's bitrate.
const useWebRtc = params.get("transport") === "webrtc";

async function webrtcSpeak(getAudio) {
  // A file or the demo sentence, played by Web Audio into the track; DONE once it has played.
  const c = audioContext();
  const decoded = await c.decodeAudioData(await getAudio());
  const speech = c.createMediaStreamDestination();
  const source = c.createBufferSource();
  source.buffer = decoded;
  source.connect(speech);
  await webrtcSession(speech.stream, (channel) => {
    source.onended = () => setTimeout(() => channel.readyState === "open" && channel.send("DONE"), 300);
    source.start();
  });
}

async function webrtcMicrophone() {
  // The microphone's own track; Stop sends DONE.
  const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  await webrtcSession(media, (channel) => {
    buttons.stop.onclick = () => {
      media.getTracks().forEach((t) => t.stop());
      if (channel.readyState === "open") channel.send("DONE");
    };
    setStatus("listening…");
  });
}

async function webrtcSession(speechStream, onOpen) {
  setButtons(true);
  tryStartAudio();
  Object.assign(stats, { framesShown: 0, framesDropped: 0, framesReceived: 0, audioSeconds: 0, skewMs: [], done: false, error: null, bitrateKbps: 0, avSyncMs: [] });
  const pc = new RTCPeerConnection({ iceServers: [] });
  buttons.stop.onclick = () => {
    pc.close();
    setButtons(false);
  }; // until onOpen says otherwise (the microphone: Stop sends DONE)
  const channel = pc.createDataChannel("control");
  pc.addTrack(speechStream.getAudioTracks()[0], speechStream);
  pc.addTransceiver("video", { direction: "recvonly" });
  const video = document.getElementById("video");
  canvas.style.display = "none";
  video.style.display = "block";
  const shown = new MediaStream();
  video.srcObject = shown;
  pc.ontrack = (ev) => {
    if (ev.track.kind === "video" || ev.transceiver.direction !== "sendonly") shown.addTrack(ev.track);
    video.play().catch(() => {});
  };
  const countFrame = () => {
    stats.framesShown++;
    video.requestVideoFrameCallback(countFrame);
  };
  video.requestVideoFrameCallback(countFrame);
  channel.onmessage = (ev) => {
    if (ev.data === "DONE") {
      stats.done = true;
      setStatus("done");
      setButtons(false);
      return;
    }
    try {
      const obj = JSON.parse(ev.data);
      if (obj.stats) stats.server = obj.stats; // frames and audio the server has sent
      if (obj.error) {
        stats.error = `${obj.error}: ${obj.detail}`;
        setStatus(stats.error);
      }
    } catch (e) {}
  };
  channel.onopen = () => onOpen(channel);
  await pc.setLocalDescription(await pc.createOffer());
  // The server takes the whole offer at once (no trickle): wait for every candidate.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
  });
  const fields = await firstMessage({ video_reference_url: document.getElementById("character").value.trim() || "default" });
  const res = await fetch("webrtc/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session: fields }),
  });
  const answer = await res.json();
  if (!res.ok) throw new Error(`${answer.error}: ${answer.detail}`);
  await pc.setRemoteDescription(answer);
  let lastBytes = 0;
  setInterval(async () => {
    const playout = {};
    for (const report of (await pc.getStats()).values()) {
      if (report.type !== "inbound-rtp") continue;
      playout[report.kind] = report.estimatedPlayoutTimestamp;
      if (report.kind === "video") {
        stats.bitrateKbps = ((report.bytesReceived - lastBytes) * 8) / 1000;
        stats.framesReceived = report.framesDecoded || 0;
        lastBytes = report.bytesReceived;
      }
    }
    // The browser's own A/V offset: what it is playing of each track, on the sender's clock
    // (from the RTCP sender reports); positive when the picture is behind the sound.
    if (playout.audio && playout.video) stats.avSyncMs.push(playout.audio - playout.video);
    const sync = stats.avSyncMs.length ? `   A/V ${stats.avSyncMs[stats.avSyncMs.length - 1].toFixed(0)} ms` : "";
    statsEl.textContent = `WebRTC   frames ${stats.framesShown}   video ${stats.bitrateKbps.toFixed(0)} kbit/s${sync}`;
  }, 1000);
}

if (params.get("demo") === "1") demo();
