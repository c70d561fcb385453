// srbridge web-demo: a softphone page on top of the bundled RTM client (/sdk/rtm-client.js).
// Plain ES module, no build step. Query parameters: appid, uid, token (prefill the login form),
// ws (hub URL, default this server's /ws), audio=raw (microphone without echo cancellation,
// noise suppression and gain control: for measurements).
import { createInstance } from '/sdk/rtm-client.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  pill: $('conn-pill'), banner: $('error-banner'), bannerText: $('error-text'),
  loginForm: $('login-form'), uid: $('uid'), appid: $('appid'), token: $('token'), loginBtn: $('login-btn'),
  dialer: $('dialer'), me: $('me'), meNumber: $('me-number'), logout: $('logout-btn'),
  incoming: $('incoming'), incomingNumber: $('incoming-number'), accept: $('accept-btn'), refuse: $('refuse-btn'),
  number: $('number'), backspace: $('backspace'), pad: $('pad'),
  info: $('call-info'), peer: $('call-peer'), state: $('call-state'), timer: $('call-timer'),
  dtmfSent: $('dtmf-sent'), dtmfReceived: $('dtmf-received'),
  call: $('call-btn'), hangup: $('hangup-btn'), mute: $('mute-btn'),
  micLevel: $('mic-level'), spkLevel: $('spk-level'), audio: $('remote-audio'),
};

/** What the page is doing; also readable by tests as `window.srbridgeDemo`. */
const demo = {
  phase: 'logged-out', // logged-out | idle | calling | incoming | in-call
  client: null,
  call: null,
  localStream: null,
  remoteStream: null,
  dtmfReceived: '',
  dtmfSent: '',
  lastError: '',
};
window.srbridgeDemo = demo;

// ---- messages ----

function showError(text) {
  demo.lastError = text;
  ui.bannerText.textContent = text;
  ui.banner.hidden = false;
}

function clearError() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = '';
}

function loginErrorText(e) {
  switch (e?.code) {
    case 'CONNECTION_FAILED': return `Cannot reach the bridge at ${demo.client?.url ?? 'its /ws address'}: is srbridge running?`;
    case 'WRONG_APPID': return 'The bridge refused this app id: use the one in its [global] appid.';
    case 'TOKEN_REQUIRED': return 'This bridge requires a login token: paste it under "Token".';
    case 'TOKEN_EXPIRED': return 'Your login token has expired: get a new one.';
    case 'TOKEN_INVALID': return `The login token is not accepted: ${e?.message ?? 'not valid for this user id'}.`;
    case 'INVALID_UID': return `This user id cannot be used: ${e?.message ?? '1–64 letters, digits or punctuation, no spaces'}.`;
    case 'RESERVED_UID': return 'This id belongs to a SIP phone or to the bridge: choose another user id.';
    case 'UID_IN_USE': return 'This user id is already logged in elsewhere: log out there first.';
    case 'SESSION_LIMIT': return 'The bridge has too many users logged in right now; try again later.';
    case 'TIMEOUT': return 'The bridge did not answer the login in time.';
    default: return `Login failed: ${e?.message ?? e}`;
  }
}

function micErrorText(e) {
  switch (e?.name) {
    case 'NotAllowedError': case 'SecurityError':
      return 'Microphone access was denied: allow the microphone for this page (icon in the address bar) and try again.';
    case 'NotFoundError': case 'OverconstrainedError': return 'No microphone found: plug one in and try again.';
    case 'NotReadableError': return 'The microphone is in use by another application.';
    default: return `Cannot open the microphone: ${e?.message ?? e}`;
  }
}

function parseResponse(text) {
  try { return JSON.parse(text || '{}') ?? {}; } catch { return {}; }
}

function refusedText(number, response) {
  const r = parseResponse(response);
  switch (Number(r.SipCode)) {
    case 486: case 600: return `${number} is busy.`;
    case 603: return `${number} declined the call.`;
    case 404: case 604: return `${number} does not exist on the PBX.`;
    default: return r.SipCode ? `${number} refused the call (SIP ${r.SipCode}).` : `${number} refused the call.`;
  }
}

function failureText(number, reason, response) {
  const r = parseResponse(response);
  switch (reason) {
    case 'INVALID_ARGUMENT':
      return /acc_rule|not allowed/i.test(r.Reason ?? '') || !r.Reason
        ? `Calls to ${number} are not allowed by this bridge (not in its acc_rule).`
        : `The bridge refused the call to ${number}: ${r.Reason}.`;
    case 'PEER_OFFLINE': return `${number} is offline: not registered on the PBX or unreachable.`;
    case 'PEER_NO_RESPONSE': return `${number} did not answer.`;
    case 'INVITATION_EXPIRE': return `${number} did not answer in time.`;
    case 'NOT_LOGGEDIN': return 'Not connected to the bridge: log in again.';
    default: return r.Reason ? `The call to ${number} failed: ${r.Reason}.` : `The call to ${number} failed.`;
  }
}

// ---- audio: microphone, remote playback, level meters ----

let audioCtx = null;
const meters = { mic: null, spk: null };

function ensureAudioContext() {
  if (!audioCtx) audioCtx = new AudioContext();
  if (audioCtx.state === 'suspended') audioCtx.resume();
  return audioCtx;
}

function meterFor(stream) {
  const ctx = ensureAudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  return { source, analyser, buf: new Float32Array(analyser.fftSize) };
}

function levelPercent(meter) {
  if (!meter) return 0;
  meter.analyser.getFloatTimeDomainData(meter.buf);
  let sum = 0;
  for (const v of meter.buf) sum += v * v;
  const db = 10 * Math.log10(sum / meter.buf.length + 1e-12);
  return Math.max(0, Math.min(100, ((db + 60) / 60) * 100)); // -60 dBFS .. 0 dBFS
}

function drawMeters() {
  ui.micLevel.style.width = `${demo.call?.muted ? 0 : levelPercent(meters.mic)}%`;
  ui.spkLevel.style.width = `${levelPercent(meters.spk)}%`;
  requestAnimationFrame(drawMeters);
}
requestAnimationFrame(drawMeters);

async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw Object.assign(new Error('The microphone needs a secure page: open it over https or on localhost.'), { name: 'SecurityError' });
  }
  const audio = params.get('audio') === 'raw'
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
    : true;
  const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
  demo.localStream = stream;
  meters.mic = meterFor(stream);
  return stream;
}

function releaseAudio() {
  for (const t of demo.localStream?.getTracks() ?? []) t.stop();
  meters.mic?.source.disconnect();
  meters.spk?.source.disconnect();
  meters.mic = null;
  meters.spk = null;
  demo.localStream = null;
  ui.audio.srcObject = null;
}

// ---- call timer ----

let timerStarted = 0;
let timerHandle = null;

function startTimer() {
  timerStarted = Date.now();
  clearInterval(timerHandle);
  const tick = () => {
    const s = Math.floor((Date.now() - timerStarted) / 1000);
    ui.timer.textContent = `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  };
  tick();
  timerHandle = setInterval(tick, 500);
}

function stopTimer() {
  clearInterval(timerHandle);
  timerHandle = null;
}

// ---- view ----

function render() {
  const p = demo.phase;
  ui.loginForm.hidden = p !== 'logged-out';
  ui.dialer.hidden = p === 'logged-out';
  ui.incoming.hidden = p !== 'incoming';
  const inCall = p === 'calling' || p === 'in-call';
  ui.info.hidden = !inCall;
  ui.number.parentElement.hidden = inCall;
  ui.call.hidden = inCall || p === 'incoming';
  ui.hangup.hidden = !inCall;
  ui.mute.hidden = p !== 'in-call';
  document.body.dataset.phase = p;
}

function setCallState(text) {
  ui.state.textContent = text;
}

function setConnection(state) {
  ui.pill.dataset.state = state;
  ui.pill.textContent = { CONNECTED: 'online', CONNECTING: 'connecting…', ABORTED: 'disconnected', DISCONNECTED: 'offline' }[state] ?? state.toLowerCase();
}

// ---- calls ----

function wireCall(call, number) {
  demo.call = call;
  demo.dtmfReceived = '';
  demo.dtmfSent = '';
  ui.peer.textContent = number;
  ui.dtmfSent.textContent = '';
  ui.dtmfReceived.textContent = '';
  ui.timer.textContent = '00:00';
  ui.mute.setAttribute('aria-pressed', 'false');
  ui.mute.textContent = 'Mute';
  call.on('RemoteStream', (stream) => {
    demo.remoteStream = stream;
    // WebAudio reads a remote WebRTC track as silence unless it also plays in a media element.
    ui.audio.srcObject = stream;
    ui.audio.play().catch(() => {});
    meters.spk?.source.disconnect();
    meters.spk = meterFor(stream);
  });
  call.on('DtmfReceived', (digit) => {
    demo.dtmfReceived += digit;
    ui.dtmfReceived.textContent = `received ${demo.dtmfReceived}`;
  });
  call.on('MediaStateChanged', (state, detail) => {
    if (state === 'failed' && demo.call === call) {
      showError(`The audio connection failed${detail ? `: ${detail}` : ''}.`);
      if (demo.phase === 'in-call') setCallState('no audio');
    } else if (state === 'connected' && demo.phase === 'in-call') {
      setCallState('connected');
    }
  });
  call.on('CallEnded', (reason) => {
    if (demo.call !== call) return;
    demo.call = null;
    demo.phase = demo.client?.connectionState === 'CONNECTED' ? 'idle' : 'logged-out';
    demo.lastEnd = reason;
    stopTimer();
    releaseAudio();
    render();
  });
}

async function dial() {
  const number = ui.number.value.trim();
  if (!number) { showError('Enter a number to call.'); return; }
  if (demo.phase !== 'idle') return;
  clearError();
  ensureAudioContext();
  let mic;
  try {
    mic = await openMicrophone();
  } catch (e) {
    showError(micErrorText(e));
    return;
  }
  const call = demo.client.createLocalInvitation(number);
  call.content = JSON.stringify({ Mode: 1, Conference: false });
  wireCall(call, number);
  demo.phase = 'calling';
  setCallState('calling…');
  render();
  call.on('LocalInvitationReceivedByPeer', () => setCallState('ringing…'));
  call.on('LocalInvitationAccepted', () => {
    demo.phase = 'in-call';
    setCallState(call.mediaState === 'connected' ? 'connected' : 'connecting audio…');
    startTimer();
    render();
  });
  call.on('LocalInvitationRefused', (response) => showError(refusedText(number, response)));
  call.on('LocalInvitationFailure', (reason) => showError(failureText(number, reason, call.response)));
  try {
    await call.send({ media: mic });
  } catch {
    // LocalInvitationFailure has said why.
  }
}

function onIncoming(inv) {
  if (demo.phase !== 'idle') {
    inv.refuse(); // one call at a time: the phone hears busy
    return;
  }
  clearError();
  wireCall(inv, inv.callerId);
  ui.incomingNumber.textContent = inv.callerId;
  demo.phase = 'incoming';
  render();
  inv.on('RemoteInvitationCanceled', () => showError(`${inv.callerId} hung up before you answered.`));
  inv.on('RemoteInvitationFailure', (reason) => {
    if (reason === 'INVITATION_EXPIRE') showError(`Missed call from ${inv.callerId}.`);
  });
}

async function acceptIncoming() {
  const inv = demo.call;
  if (!inv || demo.phase !== 'incoming') return;
  ensureAudioContext();
  let mic;
  try {
    mic = await openMicrophone();
  } catch (e) {
    showError(micErrorText(e));
    inv.hangup();
    return;
  }
  demo.phase = 'in-call';
  // The audio path may already be up: the bridge sets it up while the call rings.
  const connectedState = () => (inv.mediaState === 'connected' ? 'connected' : 'connecting audio…');
  setCallState(connectedState());
  render();
  try {
    await inv.accept({ media: mic });
    setCallState(connectedState());
    startTimer();
  } catch (e) {
    showError(`Could not accept the call: ${e.message ?? e}`);
    inv.hangup();
  }
}

function pressKey(key) {
  if (demo.phase === 'in-call' && demo.call) {
    if (demo.call.sendDtmf(key)) {
      demo.dtmfSent += key;
      ui.dtmfSent.textContent = `sent ${demo.dtmfSent}`;
    }
  } else if (demo.phase === 'idle' || demo.phase === 'logged-out') {
    ui.number.value += key;
  }
}

// ---- login ----

async function login(ev) {
  ev.preventDefault();
  clearError();
  const uid = ui.uid.value.trim();
  const appid = ui.appid.value.trim();
  ensureAudioContext();
  const client = createInstance(appid, params.get('ws') ? { url: params.get('ws') } : {});
  demo.client = client;
  client.on('ConnectionStateChanged', (state, reason) => {
    setConnection(state);
    if (state === 'ABORTED') {
      showError(reason === 'REMOTE_LOGIN'
        ? 'You logged in somewhere else: this page was logged out.'
        : 'Lost the connection to the bridge: log in again.');
      demo.phase = 'logged-out';
      render();
    }
  });
  client.on('RemoteInvitationReceived', onIncoming);
  ui.loginBtn.disabled = true;
  try {
    await client.login({ uid, token: ui.token.value.trim() || undefined });
    ui.me.textContent = uid;
    ui.meNumber.textContent = `0${uid}`;
    demo.phase = 'idle';
    const url = new URL(location.href);
    url.searchParams.set('uid', uid);
    url.searchParams.set('appid', appid);
    history.replaceState(null, '', url);
    render();
    ui.number.focus();
  } catch (e) {
    showError(loginErrorText(e));
    demo.client = null;
  } finally {
    ui.loginBtn.disabled = false;
  }
}

async function logout() {
  demo.call?.hangup();
  await demo.client?.logout().catch(() => {});
  demo.client = null;
  demo.phase = 'logged-out';
  render();
}

// ---- wiring ----

ui.loginForm.addEventListener('submit', login);
ui.logout.addEventListener('click', logout);
ui.call.addEventListener('click', dial);
ui.hangup.addEventListener('click', () => demo.call?.hangup());
ui.accept.addEventListener('click', acceptIncoming);
ui.refuse.addEventListener('click', () => demo.call?.hangup());
ui.mute.addEventListener('click', () => {
  if (!demo.call) return;
  const muted = !demo.call.muted;
  demo.call.setMuted(muted);
  ui.mute.setAttribute('aria-pressed', String(muted));
  ui.mute.textContent = muted ? 'Unmute' : 'Mute';
});
ui.backspace.addEventListener('click', () => { ui.number.value = ui.number.value.slice(0, -1); });
ui.pad.addEventListener('click', (ev) => {
  const key = ev.target.closest('.key')?.dataset.key;
  if (key) pressKey(key);
});
ui.number.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') dial(); });
$('error-close').addEventListener('click', clearError);
document.addEventListener('keydown', (ev) => {
  if (demo.phase === 'in-call' && /^[0-9*#]$/.test(ev.key)) pressKey(ev.key);
});

ui.uid.value = params.get('uid') ?? '';
ui.token.value = params.get('token') ?? '';
ui.appid.value = params.get('appid') ?? '';
if (!ui.appid.value) {
  // The bridge tells its app id in /api/webrtc.
  fetch('/api/webrtc', { cache: 'no-store' })
    .then((r) => (r.ok ? r.json() : null))
    .then((s) => { if (s?.appid && !ui.appid.value) ui.appid.value = s.appid; })
    .catch(() => showError('Cannot reach the bridge: is srbridge running?'));
}
render();
window.srbridgeDemoReady = true;
