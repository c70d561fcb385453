// Drives the web-demo softphone page in headless Chromium for the Rust tests (tests/browser_*.rs).
// Usage: node tests/browser/softphone.mjs <fake-mic.wav> [deny-mic]
// Reads one JSON command per line on stdin, answers each with one JSON line on stdout
// ({"ok":true,...} or {"ok":false,"error":"..."}). The fake microphone plays the WAV in a loop.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { writeFileSync } from 'node:fs';

const micWav = process.argv[2];
if (!micWav) {
  console.error('usage: softphone.mjs <fake-mic.wav>');
  process.exit(2);
}

// deny-mic: the user refuses the microphone prompt.
const denyMic = process.argv[3] === 'deny-mic';
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu',
    ...(denyMic ? [] : ['--use-fake-ui-for-media-stream']), '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${micWav}`,
    '--disable-background-networking', '--allow-loopback-in-peer-connection',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
const context = await browser.newContext({ viewport: { width: 400, height: 800 }, deviceScaleFactor: 2 });
if (denyMic) await context.clearPermissions();
// `preferCodec`: offers made after it list only that audio codec (and telephone-event), as a
// browser forced to G.711 would; the page's own code is untouched.
await context.addInitScript(() => {
  const createOffer = RTCPeerConnection.prototype.createOffer;
  RTCPeerConnection.prototype.createOffer = function (...args) {
    const mime = window.__srbridgeTestCodec;
    if (mime) {
      const keep = (c) => [mime.toLowerCase(), 'audio/telephone-event'].includes(c.mimeType.toLowerCase());
      const codecs = RTCRtpReceiver.getCapabilities('audio').codecs.filter(keep);
      for (const t of this.getTransceivers()) t.setCodecPreferences(codecs);
    }
    return createOffer.apply(this, args);
  };
});
const page = await context.newPage();
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });

const visible = (sel) => page.locator(sel).isVisible();

async function state() {
  return page.evaluate(() => {
    const d = window.srbridgeDemo;
    const text = (id) => document.getElementById(id)?.textContent ?? '';
    return {
      phase: d?.phase,
      lastError: d?.lastError,
      banner: document.getElementById('error-banner').hidden ? '' : text('error-text'),
      mediaState: d?.call?.mediaState ?? null,
      lastEnd: d?.lastEnd ?? null,
      dtmfReceived: d?.dtmfReceived ?? '',
      dtmfSent: d?.dtmfSent ?? '',
      peer: text('call-peer'),
      callState: text('call-state'),
      timer: text('call-timer'),
      incomingNumber: text('incoming-number'),
      connection: document.getElementById('conn-pill').dataset.state,
      hasRemoteStream: Boolean(d?.remoteStream),
      muted: Boolean(d?.call?.muted),
    };
  });
}

async function waitUntil(pred, timeoutMs, what) {
  const deadline = Date.now() + (timeoutMs ?? 15000);
  let s = await state();
  while (!pred(s)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 100));
    s = await state();
  }
  return s;
}

// In-page recorder of a remote stream (what the speaker plays), 48 kHz mono: started on a stream,
// stopped into 16-bit PCM (base64). `mark()` returns how many samples it has captured so far.
async function startRecorder(which) {
  await page.evaluate(async (which) => {
    const d = window.srbridgeDemo;
    // `held`: the call's remote track while it still rings (the early set-up), before the app has it.
    const stream = which === 'held' ? d.call?.remoteStream : d.remoteStream;
    if (!stream) throw new Error(which === 'held' ? 'no remote track while ringing (no early set-up)' : 'no remote stream');
    const ctx = new AudioContext({ sampleRate: 48000 });
    await ctx.resume();
    const src = ctx.createMediaStreamSource(stream);
    const proc = ctx.createScriptProcessor(4096, 1, 1);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    const rec = { ctx, src, proc, chunks: [], n: 0 };
    proc.onaudioprocess = (ev) => {
      const c = new Float32Array(ev.inputBuffer.getChannelData(0));
      rec.chunks.push(c);
      rec.n += c.length;
    };
    src.connect(proc);
    proc.connect(mute);
    mute.connect(ctx.destination);
    window.__srbridgeRecorder = rec;
  }, which);
}

async function stopRecorder(path) {
  const { rate, b64 } = await page.evaluate(async () => {
    const rec = window.__srbridgeRecorder;
    window.__srbridgeRecorder = null;
    rec.proc.disconnect();
    rec.src.disconnect();
    await rec.ctx.close();
    const pcm = new Int16Array(rec.n);
    let i = 0;
    for (const c of rec.chunks) for (const v of c) pcm[i++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
    const bytes = new Uint8Array(pcm.buffer);
    let bin = '';
    for (let j = 0; j < bytes.length; j += 0x8000) bin += String.fromCharCode(...bytes.subarray(j, j + 0x8000));
    return { rate: rec.ctx.sampleRate, b64: btoa(bin) };
  });
  const data = Buffer.from(b64, 'base64');
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([header, data]));
  return { rate, seconds: data.length / 2 / rate };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Records the remote stream for `ms` into a WAV at `path`.
async function record(path, ms) {
  await startRecorder('app');
  await sleep(ms);
  return stopRecorder(path);
}

// Starts recording the ringing call's remote track, lets it ring `ringMs` more (a person takes a
// moment to answer), clicks Accept, records `ms`: the WAV holds everything the page played from
// the click on (`acceptSample`: the click, in samples).
async function acceptAndRecord(path, ms, ringMs) {
  await startRecorder('held');
  // The recorder runs once it has delivered a first block.
  await page.waitForFunction(() => window.__srbridgeRecorder.n > 0);
  await sleep(ringMs ?? 0);
  const acceptSample = await page.evaluate(() => {
    const n = window.__srbridgeRecorder.n;
    document.getElementById('accept-btn').click();
    return n;
  });
  await sleep(ms);
  const inbound = await inboundAudioStats();
  return { acceptSample, inbound, ...(await stopRecorder(path)) };
}

// What the browser's jitter buffer (NetEq) did with the call's incoming audio (getStats), in ms.
async function inboundAudioStats() {
  return page.evaluate(async () => {
    const pc = window.srbridgeDemo.call?._pc;
    if (!pc) return null;
    const report = await pc.getStats();
    // The bridge's RTCP report blocks about what the page sends (Chrome's remote-inbound-rtp):
    // the loss and round trip its encoder adapts to.
    let bridgeReports = null;
    for (const s of report.values()) {
      if (s.type !== 'remote-inbound-rtp' || s.kind !== 'audio') continue;
      bridgeReports = {
        packetsLost: s.packetsLost,
        fractionLost: s.fractionLost,
        roundTripTimeMs: s.roundTripTime === undefined ? null : Math.round(1000 * s.roundTripTime),
        roundTripTimeMeasurements: s.roundTripTimeMeasurements ?? 0,
      };
    }
    for (const s of report.values()) {
      if (s.type !== 'inbound-rtp' || s.kind !== 'audio') continue;
      const ms = (samples) => Math.round((1000 * (samples ?? 0)) / 48000); // at 48 kHz: Opus; NetEq may count PCMU at 8 kHz (6× these)
      return {
        codec: report.get(s.codecId)?.mimeType ?? null,
        packetsReceived: s.packetsReceived,
        packetsLost: s.packetsLost,
        concealedMs: ms(s.concealedSamples),
        removedForAccelerationMs: ms(s.removedSamplesForAcceleration),
        insertedForDecelerationMs: ms(s.insertedSamplesForDeceleration),
        bridgeOpusFmtp: (pc.remoteDescription?.sdp.match(/a=fmtp:\d+ [^\r\n]*useinbandfec[^\r\n]*/) ?? [null])[0],
        jitterBufferMs: s.jitterBufferEmittedCount ? Math.round((1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount) : null,
        bridgeReports,
      };
    }
    return null;
  });
}

const commands = {
  async goto({ url }) {
    await page.goto(url);
    await page.waitForFunction(() => window.srbridgeDemoReady === true);
    return {};
  },
  async login({ uid, appid }) {
    await page.fill('#uid', uid);
    if (appid !== undefined) await page.fill('#appid', appid);
    await page.click('#login-btn');
    return waitUntil((s) => s.phase !== 'logged-out' || s.banner, 15000, 'login');
  },
  async dial({ number }) {
    // Type it on the dial pad, as a user would.
    for (const key of number) await page.click(`.key[data-key="${key}"]`);
    await page.click('#call-btn');
    return state();
  },
  async dialTyped({ number }) {
    await page.fill('#number', number);
    await page.press('#number', 'Enter');
    return state();
  },
  async key({ key }) {
    await page.click(`.key[data-key="${key}"]`);
    return state();
  },
  async click({ selector }) {
    await page.click(selector);
    return state();
  },
  async waitPhase({ phase, timeoutMs }) {
    return waitUntil((s) => s.phase === phase, timeoutMs, `phase ${phase}`);
  },
  async waitMedia({ mediaState, timeoutMs }) {
    return waitUntil((s) => s.mediaState === mediaState, timeoutMs, `media ${mediaState}`);
  },
  async waitBanner({ timeoutMs }) {
    return waitUntil((s) => s.banner !== '', timeoutMs, 'an error message');
  },
  async waitDtmf({ digits, timeoutMs }) {
    return waitUntil((s) => s.dtmfReceived.includes(digits), timeoutMs, `DTMF ${digits}`);
  },
  async incoming({ timeoutMs }) {
    await page.locator('#incoming').waitFor({ state: 'visible', timeout: timeoutMs ?? 15000 });
    return state();
  },
  async visible({ selector }) {
    return { visible: await visible(selector) };
  },
  async meters() {
    // Percent widths of the two level meters, sampled over a second (max).
    let mic = 0; let spk = 0;
    for (let i = 0; i < 10; i++) {
      const w = await page.evaluate(() => [
        parseFloat(document.getElementById('mic-level').style.width) || 0,
        parseFloat(document.getElementById('spk-level').style.width) || 0,
      ]);
      mic = Math.max(mic, w[0]);
      spk = Math.max(spk, w[1]);
      await new Promise((r) => setTimeout(r, 100));
    }
    return { mic, spk };
  },
  record({ path, ms }) { return record(path, ms); },
  acceptAndRecord({ path, ms, ringMs }) { return acceptAndRecord(path, ms, ringMs); },
  async screenshot({ path }) {
    await page.mouse.move(0, 0); // no hover highlight in the picture
    await page.screenshot({ path, fullPage: true });
    return {};
  },
  async preferCodec({ mime }) {
    await page.evaluate((m) => { window.__srbridgeTestCodec = m; }, mime);
    return {};
  },
  state() { return state(); },
  errors() { return { pageErrors }; },
};

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let msg;
  try { msg = JSON.parse(line); } catch { console.log(JSON.stringify({ ok: false, error: `bad JSON: ${line}` })); continue; }
  if (msg.cmd === 'close') break;
  const fn = commands[msg.cmd];
  try {
    if (!fn) throw new Error(`unknown command ${msg.cmd}`);
    const result = await fn(msg);
    console.log(JSON.stringify({ ok: true, ...result }));
  } catch (e) {
    let s = null;
    try { s = await state(); } catch { /* page gone */ }
    console.log(JSON.stringify({ ok: false, error: String(e.message ?? e), state: s, pageErrors }));
  }
}
await browser.close();
