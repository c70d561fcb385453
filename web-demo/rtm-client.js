// srbridge RTM client: the browser side of the bridge's signalling hub (docs/protocol.md, v1).
//
// Mirrors the call-invitation part of the Agora/anyRTC RTM 1.x web SDK, so ARCall-style apps port
// by swapping the import:
//
//   import { createInstance } from '/sdk/rtm-client.js';
//   const client = createInstance(appId);            // or createInstance(appId, { url: 'wss://…/ws' })
//   client.on('RemoteInvitationReceived', (inv) => inv.accept());
//   await client.login({ uid: 'alice', token });
//   const inv = client.createLocalInvitation('1005');
//   inv.content = JSON.stringify({ Mode: 1 });
//   inv.on('LocalInvitationAccepted', (response) => …);
//   inv.send();
//
// Calls through the bridge also carry audio: the client owns the RTCPeerConnection.
//
//   const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
//   const call = client.createLocalInvitation('1001');
//   call.on('RemoteStream', (stream) => { audioElement.srcObject = stream; });
//   call.send({ media: mic });                        // remote.accept({ media: mic }) for incoming calls
//
// Incoming calls from the bridge set up their audio path while they ring (the bridge's `prepare`):
// no microphone is attached and no remote stream handed out (`RemoteStream`) before `accept`.
//   call.sendDtmf('123#'); call.setMuted(true); call.hangup();
//
// Differences from RTM: state/reason names are the same strings, promises reject with an
// `RtmError` whose `code` is the hub's error code string (e.g. 'WRONG_APPID'), and the client does
// not reconnect by itself (a lost socket gives ConnectionStateChanged('ABORTED', 'INTERRUPTED')).
// No build step: an ES module that works as is.

export const VERSION = '1.1.0';
export const PROTOCOL_VERSION = 1;

const REQUEST_TIMEOUT_MS = 10000;
const KEEPALIVE_MS = 25000;
const MEDIA_BUFFER_LIMIT = 64;
const ICE_FETCH_TIMEOUT_MS = 3000;
const DTMF_DURATION_MS = 100;
const DTMF_GAP_MS = 70;
const END_CALL = '{"Cmd":"EndCall"}';

/** RTM's status code strings, for apps that compare against `RtmStatusCode.*`. */
export const RtmStatusCode = Object.freeze({
  ConnectionState: Object.freeze({
    DISCONNECTED: 'DISCONNECTED', CONNECTING: 'CONNECTING', CONNECTED: 'CONNECTED',
    RECONNECTING: 'RECONNECTING', ABORTED: 'ABORTED',
  }),
  ConnectionChangeReason: Object.freeze({
    LOGIN: 'LOGIN', LOGIN_SUCCESS: 'LOGIN_SUCCESS', LOGIN_FAILURE: 'LOGIN_FAILURE',
    LOGIN_TIMEOUT: 'LOGIN_TIMEOUT', INTERRUPTED: 'INTERRUPTED', LOGOUT: 'LOGOUT',
    BANNED_BY_SERVER: 'BANNED_BY_SERVER', REMOTE_LOGIN: 'REMOTE_LOGIN', TOKEN_EXPIRED: 'TOKEN_EXPIRED',
  }),
  LocalInvitationState: Object.freeze({
    IDLE: 'IDLE', SENT_TO_REMOTE: 'SENT_TO_REMOTE', RECEIVED_BY_REMOTE: 'RECEIVED_BY_REMOTE',
    ACCEPTED_BY_REMOTE: 'ACCEPTED_BY_REMOTE', REFUSED_BY_REMOTE: 'REFUSED_BY_REMOTE',
    CANCELED: 'CANCELED', FAILURE: 'FAILURE',
  }),
  RemoteInvitationState: Object.freeze({
    INVITATION_RECEIVED: 'INVITATION_RECEIVED', ACCEPT_SENT_TO_LOCAL: 'ACCEPT_SENT_TO_LOCAL',
    REFUSED: 'REFUSED', CANCELED: 'CANCELED', ACCEPTED: 'ACCEPTED', FAILURE: 'FAILURE',
  }),
  LocalInvitationFailureReason: Object.freeze({
    UNKNOWN: 'UNKNOWN', PEER_NO_RESPONSE: 'PEER_NO_RESPONSE', INVITATION_EXPIRE: 'INVITATION_EXPIRE',
    PEER_OFFLINE: 'PEER_OFFLINE', NOT_LOGGEDIN: 'NOT_LOGGEDIN', INVALID_ARGUMENT: 'INVALID_ARGUMENT',
  }),
  RemoteInvitationFailureReason: Object.freeze({
    UNKNOWN: 'UNKNOWN', PEER_OFFLINE: 'PEER_OFFLINE', ACCEPT_FAILURE: 'ACCEPT_FAILURE',
    INVITATION_EXPIRE: 'INVITATION_EXPIRE',
  }),
  PeerOnlineState: Object.freeze({ ONLINE: 'ONLINE', UNREACHABLE: 'UNREACHABLE', OFFLINE: 'OFFLINE' }),
});

/** A failed request: `code` is the hub's error code ('TOKEN_EXPIRED', 'NOT_LOGGED_IN', …). */
export class RtmError extends Error {
  constructor(code, message) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'RtmError';
    this.code = code;
  }
}

/** Minimal event emitter with RTM's `on`/`off`/`once`. */
class Emitter {
  constructor() { this._handlers = new Map(); }

  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('handler must be a function');
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    if (fn === undefined) this._handlers.delete(event);
    else this._handlers.get(event)?.delete(fn);
    return this;
  }

  once(event, fn) {
    const wrapper = (...args) => { this.off(event, wrapper); fn(...args); };
    return this.on(event, wrapper);
  }

  removeAllListeners(event) {
    if (event === undefined) this._handlers.clear(); else this._handlers.delete(event);
    return this;
  }

  emit(event, ...args) {
    for (const fn of [...(this._handlers.get(event) ?? [])]) {
      try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }
}

/** A v4 UUID, also outside secure contexts (where crypto.randomUUID is missing). */
function uuid() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The RTM failure reason for a refused `invite` (the RtmError with the hub's code goes along). */
function failureReason(code) {
  switch (code) {
    case 'NOT_LOGGED_IN': return 'NOT_LOGGEDIN';
    case 'INVALID_ARGUMENT': case 'CONTENT_TOO_LARGE': case 'DUPLICATE_CALL_ID': case 'BAD_MESSAGE':
      return 'INVALID_ARGUMENT';
    default: return 'UNKNOWN';
  }
}

/** Whether a peer message is the `{"Cmd":"EndCall"}` that ends an accepted call. */
function isEndCall(text) {
  try { return JSON.parse(text)?.Cmd === 'EndCall'; } catch { return false; }
}

/** Returns `p` with a no-op rejection handler attached, so fire-and-forget calls stay quiet. */
function quiet(p) { p.catch(() => {}); return p; }

/** Shared by local and remote invitations: the per-call media channel. */
class InvitationBase extends Emitter {
  constructor(client, callId) {
    super();
    this._client = client;
    this.callId = callId;
    this._mediaHandlers = [];
    this._mediaBuffer = [];
  }

  /** Receive media signalling (SDP, ICE, DTMF) for this call; earlier messages are replayed. */
  onMedia(fn) {
    this._mediaHandlers.push(fn);
    const buffered = this._mediaBuffer.splice(0);
    for (const m of buffered) fn(m.payload, m.from);
    return this;
  }

  /** Send media signalling (a JSON object) for this call. */
  sendMedia(payload) {
    return this._client._request('media', { callId: this.callId, payload });
  }

  _media(payload, from) {
    if (this._mediaHandlers.length === 0) {
      if (this._mediaBuffer.length < MEDIA_BUFFER_LIMIT) this._mediaBuffer.push({ payload, from });
      return;
    }
    for (const fn of this._mediaHandlers) {
      try { fn(payload, from); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  /** The peer of this call: the callee for local invitations, the caller for remote ones. */
  get peerId() { return this instanceof LocalInvitation ? this.calleeId : this.callerId; }

  /**
   * Sends DTMF digits (0-9, *, #, A-D; ',' pauses). In RTP (RFC 4733) through RTCDTMFSender when
   * the browser has it, else as hub `media` messages. Returns false when there is no call media.
   */
  sendDtmf(digits) {
    const tones = String(digits ?? '').toUpperCase();
    if (!/^[0-9A-D*#,]+$/.test(tones)) throw new RangeError(`not DTMF digits: ${digits}`);
    if (!this._pc || this._pc.signalingState === 'closed') return false;
    const dtmf = this._sender?.dtmf;
    if (dtmf && dtmf.canInsertDTMF !== false) {
      dtmf.insertDTMF(dtmf.toneBuffer + tones, DTMF_DURATION_MS, DTMF_GAP_MS);
    } else {
      for (const digit of tones.replace(/,/g, '')) quiet(this.sendMedia({ kind: 'dtmf', digit }));
    }
    return true;
  }

  /** Mutes or unmutes the microphone sent in this call (the tracks stay, they send silence). */
  setMuted(muted) {
    this.muted = Boolean(muted);
    for (const track of this._localStream?.getAudioTracks() ?? []) track.enabled = !this.muted;
  }

  /** The state of the call's audio: RTCPeerConnection.connectionState, or 'none' before media. */
  get mediaState() { return this._mediaState ?? 'none'; }

  /**
   * Ends the call whatever its state: cancels a ringing outgoing call, refuses a ringing incoming
   * one, sends {"Cmd":"EndCall"} to the peer of an accepted call; closes the peer connection.
   */
  hangup() {
    const ringing = !this._isAccepted() && this._client._invitations.has(this.callId);
    const ended = this._hangupSignal();
    this._endCall('LOCAL_HANGUP', ringing);
    return quiet(ended);
  }

  /**
   * Creates the RTCPeerConnection and sends the offer. `early`: the bridge asked for media while
   * the call still rings (`prepare`): the audio transceiver carries no track and the remote
   * stream is kept back until `accept` (`_attachMedia`), so nothing is sent or played before it.
   */
  async _openMedia(stream, early = false) {
    this._mediaOpened = true;
    this.muted = false;
    this._localStream = early ? null : (stream ?? null);
    this._holdRemote = early;
    this._pendingCandidates = [];
    this._remoteDescribed = false;
    this._setMediaState('new');
    const iceServers = await this._client._iceServers();
    if (this._ended) return;
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    this._pc = pc;
    const tracks = stream?.getAudioTracks() ?? [];
    if (early) {
      this._sender = pc.addTransceiver('audio', { direction: 'sendrecv' }).sender;
    } else if (tracks.length > 0) {
      this._sender = pc.addTrack(tracks[0], stream);
    } else {
      this._sender = pc.addTransceiver('audio', { direction: 'recvonly' }).sender;
    }
    pc.onicecandidate = (ev) => {
      const c = ev.candidate;
      const candidate = c && c.candidate
        ? { candidate: c.candidate, sdpMid: c.sdpMid ?? '0', sdpMLineIndex: c.sdpMLineIndex ?? 0 }
        : null;
      // Chromium reports the end twice (empty candidate, then null): send one end marker.
      if (candidate === null) {
        if (this._sentEndOfCandidates) return;
        this._sentEndOfCandidates = true;
      }
      quiet(this.sendMedia({ kind: 'candidate', candidate }));
    };
    pc.ontrack = (ev) => {
      const remote = ev.streams[0] ?? new MediaStream([ev.track]);
      this.remoteStream = remote;
      if (!this._holdRemote) this.emit('RemoteStream', remote);
    };
    pc.onconnectionstatechange = () => this._setMediaState(pc.connectionState);
    this.onMedia((payload) => this._onMediaMessage(payload));
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (this._ended) return;
    await this.sendMedia({ kind: 'offer', sdp: pc.localDescription.sdp });
  }

  async _onMediaMessage(payload) {
    const pc = this._pc;
    if (!pc || pc.signalingState === 'closed' || !payload || typeof payload !== 'object') return;
    try {
      switch (payload.kind) {
        case 'answer':
          await pc.setRemoteDescription({ type: 'answer', sdp: String(payload.sdp ?? '') });
          this._remoteDescribed = true;
          for (const c of this._pendingCandidates.splice(0)) await this._addCandidate(c);
          return;
        case 'candidate':
          if (this._remoteDescribed) await this._addCandidate(payload.candidate ?? null);
          else this._pendingCandidates.push(payload.candidate ?? null);
          return;
        case 'dtmf':
          if (typeof payload.digit === 'string') this.emit('DtmfReceived', payload.digit);
          return;
        case 'error':
          this._setMediaState('failed', String(payload.message ?? 'the bridge refused the media'));
          return;
        default:
      }
    } catch (e) {
      this._setMediaState('failed', `bad ${payload.kind} from the bridge: ${e.message ?? e}`);
    }
  }

  async _addCandidate(candidate) {
    if (candidate && candidate.candidate) await this._pc.addIceCandidate(candidate);
    else await this._pc.addIceCandidate();
  }

  _setMediaState(state, detail) {
    if (this._mediaState === state) return;
    this._mediaState = state;
    this.emit('MediaStateChanged', state, detail);
  }

  _startMediaQuietly(stream) {
    this._openMedia(stream).catch((e) => this._setMediaState('failed', e.message ?? String(e)));
  }

  /** Closes the media once, for whatever reason the call ended; emits CallEnded(reason). */
  _endCall(reason, keepRegistered = false) {
    // A ringing call that is hung up stays registered until the hub confirms its end.
    if (!keepRegistered) this._client._invitations.delete(this.callId);
    if (this._ended) return;
    this._ended = true;
    const pc = this._pc;
    if (pc) {
      pc.onicecandidate = null;
      pc.ontrack = null;
      pc.onconnectionstatechange = null;
      pc.close();
      this._setMediaState('closed');
    }
    this.emit('CallEnded', reason);
  }
}

/** An invitation this user sends (RTM LocalInvitation). */
export class LocalInvitation extends InvitationBase {
  constructor(client, calleeId) {
    super(client, uuid());
    this.calleeId = String(calleeId);
    this.content = '';
    this.response = '';
    this.channelId = '';
    this.state = RtmStatusCode.LocalInvitationState.IDLE;
  }

  /**
   * Rings the callee; resolves when the hub took it, rejects (and emits Failure) otherwise.
   * With `{ media: MediaStream }` (or `{ media: null }` to only listen) the call carries audio:
   * the WebRTC offer goes out as soon as the hub took the invitation, so ringback is heard.
   */
  send(options = {}) {
    const LS = RtmStatusCode.LocalInvitationState;
    if (this.state !== LS.IDLE) {
      return quiet(Promise.reject(new RtmError('INVALID_STATE', `invitation is ${this.state}`)));
    }
    this.state = LS.SENT_TO_REMOTE;
    this._client._invitations.set(this.callId, this);
    return quiet(this._client._request('invite', {
      callId: this.callId, callee: this.calleeId, content: String(this.content ?? ''),
    }).then(() => {
      if (options && 'media' in options) this._startMediaQuietly(options.media);
    }, (e) => {
      this._client._invitations.delete(this.callId);
      this.state = LS.FAILURE;
      this.emit('LocalInvitationFailure', failureReason(e.code), e);
      throw e;
    }));
  }

  /** Stops ringing; LocalInvitationCanceled follows. */
  cancel() {
    return quiet(this._client._request('cancel', { callId: this.callId }).then(() => undefined));
  }

  _state(msg) {
    const LS = RtmStatusCode.LocalInvitationState;
    if (msg.response !== undefined) this.response = msg.response;
    this.state = msg.state;
    switch (msg.state) {
      case LS.RECEIVED_BY_REMOTE: this.emit('LocalInvitationReceivedByPeer'); return;
      case LS.ACCEPTED_BY_REMOTE: this.emit('LocalInvitationAccepted', this.response); break;
      case LS.REFUSED_BY_REMOTE: this.emit('LocalInvitationRefused', this.response); break;
      case LS.CANCELED: this.emit('LocalInvitationCanceled'); break;
      case LS.FAILURE: this.emit('LocalInvitationFailure', msg.reason ?? 'UNKNOWN'); break;
      default: return;
    }
    // Accepted calls keep their media channel; the others are over.
    if (msg.state !== LS.ACCEPTED_BY_REMOTE) this._endCall(msg.state);
  }

  _isAccepted() { return this.state === RtmStatusCode.LocalInvitationState.ACCEPTED_BY_REMOTE; }

  _hangupSignal() {
    const LS = RtmStatusCode.LocalInvitationState;
    if (this.state === LS.SENT_TO_REMOTE || this.state === LS.RECEIVED_BY_REMOTE) return this.cancel();
    if (this.state === LS.ACCEPTED_BY_REMOTE && !this._ended) {
      return this._client.sendMessageToPeer({ text: END_CALL }, this.calleeId);
    }
    return Promise.resolve();
  }
}

/** An invitation this user receives (RTM RemoteInvitation). */
export class RemoteInvitation extends InvitationBase {
  constructor(client, msg) {
    super(client, msg.callId);
    this.callerId = msg.caller;
    this.content = msg.content ?? '';
    this.response = '';
    this.channelId = '';
    this.state = RtmStatusCode.RemoteInvitationState.INVITATION_RECEIVED;
  }

  /**
   * Accepts with `this.response`; RemoteInvitationAccepted follows. With `{ media: MediaStream }`
   * (or `{ media: null }` to only listen) the call carries audio. When the bridge asked for media
   * while ringing (`prepare`), the connection is already up: the microphone is attached and the
   * remote stream handed out now (then plain `accept()` listens only); otherwise the WebRTC offer
   * is sent just before the accept.
   */
  accept(options = {}) {
    if (this._preparing) {
      const stream = options && 'media' in options ? options.media : null;
      return quiet(this._preparing.then((ok) => (ok ? this._attachMedia(stream) : undefined)).then(
        () => this._answer('accept'),
        (e) => {
          this._setMediaState('failed', e.message ?? String(e));
          throw e;
        },
      ));
    }
    if (!options || !('media' in options)) return this._answer('accept');
    return quiet(this._openMedia(options.media).then(() => this._answer('accept'), (e) => {
      this._setMediaState('failed', e.message ?? String(e));
      throw e;
    }));
  }

  /** The bridge's `prepare`: offer now, while ringing, so the audio path is up at accept. */
  _media(payload, from) {
    if (payload && payload.kind === 'prepare') {
      const RS = RtmStatusCode.RemoteInvitationState;
      // Without WebRTC here (e.g. a signalling-only client), the offer waits for accept({ media }).
      const webrtc = typeof RTCPeerConnection !== 'undefined';
      if (webrtc && !this._mediaOpened && this.state === RS.INVITATION_RECEIVED) {
        // A failed early set-up is reported (MediaStateChanged 'failed'); the accept still goes.
        this._preparing = this._openMedia(null, true).then(() => true, (e) => {
          this._setMediaState('failed', e.message ?? String(e));
          return false;
        });
      }
      return;
    }
    super._media(payload, from);
  }

  /** At accept: the microphone goes on the prepared connection, the remote stream to the app. */
  async _attachMedia(stream) {
    const track = stream?.getAudioTracks()[0] ?? null;
    this._localStream = stream ?? null;
    if (track && this._sender) await this._sender.replaceTrack(track);
    this._holdRemote = false;
    if (this.remoteStream) this.emit('RemoteStream', this.remoteStream);
  }

  /** Refuses with `this.response`; RemoteInvitationRefused follows. */
  refuse() { return this._answer('refuse'); }

  _answer(kind) {
    const RS = RtmStatusCode.RemoteInvitationState;
    return quiet(this._client._request(kind, {
      callId: this.callId, response: String(this.response ?? ''),
    }).then(() => {
      if (kind === 'accept') {
        this.state = RS.ACCEPTED;
        this.emit('RemoteInvitationAccepted');
      } else {
        this.state = RS.REFUSED;
        this.emit('RemoteInvitationRefused');
        this._endCall('REFUSED');
      }
    }));
  }

  _isAccepted() { return this.state === RtmStatusCode.RemoteInvitationState.ACCEPTED; }

  _hangupSignal() {
    const RS = RtmStatusCode.RemoteInvitationState;
    if (this.state === RS.INVITATION_RECEIVED) return this.refuse();
    if (this.state === RS.ACCEPTED && !this._ended) {
      return this._client.sendMessageToPeer({ text: END_CALL }, this.callerId);
    }
    return Promise.resolve();
  }

  _state(msg) {
    const RS = RtmStatusCode.RemoteInvitationState;
    this.state = msg.state;
    if (msg.state === RS.CANCELED) {
      this.emit('RemoteInvitationCanceled');
      this._endCall('CANCELED');
    } else if (msg.state === RS.FAILURE) {
      this.emit('RemoteInvitationFailure', msg.reason ?? 'UNKNOWN');
      this._endCall('FAILURE');
    }
  }
}

/** One login to the hub (RTM RtmClient). */
export class RtmClient extends Emitter {
  constructor(appId, options = {}) {
    super();
    this.appId = String(appId);
    this.url = options.url ?? RtmClient._defaultUrl();
    this.uid = null;
    this.connectionState = RtmStatusCode.ConnectionState.DISCONNECTED;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._invitations = new Map();
    this._keepalive = null;
    this._iceServersOption = options.iceServers;
  }

  /**
   * What `GET /api/webrtc` on the bridge says (`{ iceServers, appid }`), or null when the bridge
   * cannot be asked. `url` defaults to the client's hub URL.
   */
  async fetchWebRtcSettings() {
    const u = new URL(this.url);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    u.pathname = '/api/webrtc';
    u.search = '';
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), ICE_FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(u.href, { signal: abort.signal, cache: 'no-store' });
      return res.ok ? await res.json() : null;
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  async _iceServers() {
    if (Array.isArray(this._iceServersOption)) return this._iceServersOption;
    const settings = await this.fetchWebRtcSettings();
    return Array.isArray(settings?.iceServers) ? settings.iceServers : [];
  }

  static _defaultUrl() {
    const base = new URL('/ws', import.meta.url);
    base.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:';
    return base.href;
  }

  /** Connects and logs in; rejects with the hub's reason (WRONG_APPID, TOKEN_EXPIRED, …). */
  login({ uid, token } = {}) {
    const CS = RtmStatusCode.ConnectionState;
    const CR = RtmStatusCode.ConnectionChangeReason;
    if (this._ws) return Promise.reject(new RtmError('ALREADY_LOGGED_IN', 'log out first'));
    this._setState(CS.CONNECTING, CR.LOGIN);
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        this._setState(CS.DISCONNECTED, CR.LOGIN_FAILURE);
        reject(new RtmError('CONNECTION_FAILED', String(e)));
        return;
      }
      this._ws = ws;
      let settled = false;
      ws.onopen = () => {
        const fields = { v: PROTOCOL_VERSION, uid: String(uid ?? ''), appid: this.appId };
        if (token) fields.token = String(token);
        this._request('login', fields).then((ok) => {
          settled = true;
          this.uid = ok.uid;
          // The hub's CONNECTED event follows; report it now so the state is right on resolve.
          this._setState(CS.CONNECTED, CR.LOGIN_SUCCESS);
          this._keepalive = setInterval(() => this._sendRaw({ type: 'ping' }), KEEPALIVE_MS);
          resolve();
        }, (e) => {
          settled = true;
          this._teardown();
          this._setState(CS.DISCONNECTED, CR.LOGIN_FAILURE);
          reject(e);
        });
      };
      ws.onmessage = (ev) => this._onFrame(ev.data);
      ws.onclose = () => {
        if (this._ws !== ws) return;
        const wasLoggedIn = this.connectionState === CS.CONNECTED;
        this._teardown();
        if (!settled) {
          settled = true;
          this._setState(CS.DISCONNECTED, CR.LOGIN_FAILURE);
          reject(new RtmError('CONNECTION_FAILED', `cannot reach ${this.url}`));
        } else if (wasLoggedIn) {
          this._setState(CS.ABORTED, CR.INTERRUPTED);
        }
      };
    });
  }

  /** Logs out and closes the socket. */
  async logout() {
    if (!this._ws) return;
    try { await this._request('logout', {}); } finally {
      this._teardown();
      if (this.connectionState !== RtmStatusCode.ConnectionState.DISCONNECTED) {
        this._setState(RtmStatusCode.ConnectionState.DISCONNECTED, RtmStatusCode.ConnectionChangeReason.LOGOUT);
      }
    }
  }

  /** An invitation to `calleeId` (a user id or a SIP number); set `.content`, then `send()`. */
  createLocalInvitation(calleeId) { return new LocalInvitation(this, calleeId); }

  /** Resolves with `{ hasPeerReceived }`. */
  async sendMessageToPeer(message, peerId) {
    const text = typeof message === 'string' ? message : message?.text;
    const ok = await this._request('peer_message', { to: String(peerId), text: String(text ?? '') });
    return { hasPeerReceived: ok.hasPeerReceived === true };
  }

  /** Resolves with `{ [peerId]: boolean }`. */
  async queryPeersOnlineStatus(peerIds) {
    const ok = await this._request('query_online', { uids: [...peerIds].map(String) });
    return ok.online ?? {};
  }

  /** PeersOnlineStatusChanged fires now with the current states and later on every change. */
  async subscribePeersOnlineStatus(peerIds) {
    await this._request('subscribe_online', { uids: [...peerIds].map(String) });
  }

  async unsubscribePeersOnlineStatus(peerIds) {
    await this._request('unsubscribe_online', { uids: [...peerIds].map(String) });
  }

  _setState(state, reason) {
    if (this.connectionState === state) return;
    this.connectionState = state;
    this.emit('ConnectionStateChanged', state, reason);
  }

  _sendRaw(msg) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  _request(type, fields) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      if (!this._sendRaw({ type, id, ...fields })) {
        reject(new RtmError('NOT_LOGGED_IN', 'not connected to the hub'));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RtmError('TIMEOUT', `no answer to ${type}`));
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(id, { resolve, reject, timer });
    });
  }

  _teardown() {
    const ws = this._ws;
    this._ws = null;
    this.uid = null;
    clearInterval(this._keepalive);
    this._keepalive = null;
    if (ws && ws.readyState <= 1) ws.close();
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(new RtmError('NOT_LOGGED_IN', 'connection closed'));
    }
    this._pending.clear();
    const invitations = [...this._invitations.values()];
    this._invitations.clear();
    for (const inv of invitations) {
      if (inv instanceof LocalInvitation) {
        if (inv.state === 'SENT_TO_REMOTE' || inv.state === 'RECEIVED_BY_REMOTE') {
          inv.state = 'FAILURE';
          inv.emit('LocalInvitationFailure', 'NOT_LOGGEDIN');
        }
      } else if (inv.state === 'INVITATION_RECEIVED') {
        inv.state = 'FAILURE';
        inv.emit('RemoteInvitationFailure', 'PEER_OFFLINE');
      }
      inv._endCall('CONNECTION_LOST');
    }
  }

  _onFrame(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'ok':
      case 'error': {
        const pending = this._pending.get(msg.id);
        if (!pending) {
          if (msg.type === 'error') this.emit('Error', new RtmError(msg.code, msg.message));
          return;
        }
        this._pending.delete(msg.id);
        clearTimeout(pending.timer);
        if (msg.type === 'ok') pending.resolve(msg);
        else pending.reject(new RtmError(msg.code, msg.message));
        return;
      }
      case 'connection_state':
        if (msg.state === 'ABORTED') {
          // Replaced by a login elsewhere: the hub closes this socket; do not report INTERRUPTED.
          this._teardown();
        }
        this._setState(msg.state, msg.reason);
        return;
      case 'peer_message':
        this.emit('MessageFromPeer', { text: msg.text, messageType: 'TEXT' }, msg.from, {});
        if (isEndCall(msg.text)) {
          for (const inv of [...this._invitations.values()]) {
            if (inv.peerId === msg.from && inv._isAccepted()) inv._endCall('REMOTE_HANGUP');
          }
        }
        return;
      case 'peers_status':
        this.emit('PeersOnlineStatusChanged', msg.status ?? {});
        return;
      case 'remote_invitation': {
        const inv = new RemoteInvitation(this, msg);
        this._invitations.set(inv.callId, inv);
        // Confirm first so the caller hears ringing (RECEIVED_BY_REMOTE / SIP 180).
        quiet(this._request('received', { callId: inv.callId }));
        this.emit('RemoteInvitationReceived', inv);
        return;
      }
      case 'remote_invitation_state':
      case 'local_invitation_state':
        this._invitations.get(msg.callId)?._state(msg);
        return;
      case 'media':
        this._invitations.get(msg.callId)?._media(msg.payload, msg.from);
        return;
      default:
        // Later protocol versions may add events; ignore what we do not know.
    }
  }
}

/** RTM's entry point: `createInstance(appId, { url })`. */
export function createInstance(appId, options = {}) {
  return new RtmClient(appId, options);
}

export default { createInstance, RtmStatusCode, RtmError, VERSION, PROTOCOL_VERSION };
