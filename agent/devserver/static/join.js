// The dev backend's join page: a plain JavaScript client of Connvo's Convex HTTP API.
//
// It does what the agent does, the browser way: its own WebRTC session (createWebRTCSession),
// polling for signals (getPendingSignals + markSignalsProcessed), one RTCPeerConnection per remote
// session with perfect negotiation (the side whose user id sorts higher is polite), trickle ICE
// both ways (end-of-candidates included), camera and microphone, remote media shown, participants
// (getActiveSessions) and a few live stats (getStats).
//
// Query parameters: meeting=ID, name=NAME, autojoin=1, audio=0, video=0 (no microphone/camera),
// call=0 (answer only; by default the page calls everyone present), and for tests: loopback=1
// (signal only 127.0.0.1 and mDNS candidates), gather=1 (no trickle: descriptions carry every
// candidate), glare=1 (hold the first offer until the remote's offer arrives, then send both),
// synthetic=1 (a tone and a drawn pattern instead of the microphone and camera).
'use strict';
(() => {
  const params = new URLSearchParams(location.search);
  const opt = {
    meeting: params.get('meeting') || '',
    name: params.get('name') || '',
    audio: params.get('audio') !== '0',
    video: params.get('video') !== '0',
    call: params.get('call') !== '0',
    loopback: params.get('loopback') === '1',
    gather: params.get('gather') === '1',
    glare: params.get('glare') === '1',
    synthetic: params.get('synthetic') === '1',
    autojoin: params.get('autojoin') === '1',
  };
  const SIG = 'meetings/webrtc/signaling/';
  const FAST_POLL_MS = 50;
  const IDLE_POLL_MS = 500;
  const DISCOVERY_MS = 2000;
  const STATS_MS = 500;

  const state = {
    running: false, token: null, userId: null, sessionId: null, meetingId: null,
    iceServers: [], localStream: null, peers: new Map(), closedSessions: new Set(),
    handled: new Set(), participants: [], lastActivity: 0, connectedAt: null,
    reported: null, log: [],
  };
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function log(...parts) {
    const line = `${(performance.now() / 1000).toFixed(2)} ${parts.join(' ')}`;
    state.log.push(line);
    if (state.log.length > 500) state.log.shift();
    const box = $('log');
    if (box) { box.textContent += line + '\n'; box.scrollTop = box.scrollHeight; }
  }

  // --- the HTTP API ----------------------------------------------------------------------------

  // One line for an error envelope: the ConvexError's code and message when there is one, else
  // the development deployment's explanation (or just "Server Error" from a production one).
  function functionError(body) {
    const data = body.errorData;
    if (data && typeof data.code === 'string') return `${data.code}: ${data.message || ''}`.trim();
    const lines = String(body.errorMessage || '').split('\n').map((l) => l.trim()).filter(Boolean);
    return lines.slice(1).join(' ') || lines[0] || 'function error';
  }

  async function run(path, args, { keepalive = false } = {}) {
    for (let attempt = 1; ; attempt++) {
      let res;
      try {
        res = await fetch('/api/run/' + path, {
          method: 'POST', keepalive,
          headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + state.token },
          body: JSON.stringify({ args, format: 'json' }),
        });
      } catch (err) {
        if (attempt >= 4) throw err;
        await sleep(100 * 2 ** attempt);
        continue;
      }
      let body = null;
      try { body = await res.json(); } catch (err) { /* not JSON */ }
      const envelope = body !== null && typeof body === 'object' &&
        (body.status === 'success' || body.status === 'error');
      if (envelope && res.ok && body.status === 'success') return body.value;
      // A function that threw answers an error envelope with 200, 400 or 560 alike: final.
      if (envelope && body.status === 'error') {
        throw new Error(`${path}: ${functionError(body)}`);
      }
      const transient = res.status === 429 || res.status >= 500;
      if (transient && attempt < 4) { await sleep(100 * 2 ** attempt); continue; }
      // The transport's own errors are {code, message}.
      const said = body && typeof body === 'object' && body.message;
      throw new Error(`${path}: HTTP ${res.status}${said ? ' ' + said : ''}`);
    }
  }

  // --- candidates and descriptions -------------------------------------------------------------

  function candidateAddress(text) {
    const fields = text.replace(/^a=/, '').split(/\s+/);
    return fields.length > 4 ? fields[4] : '';
  }

  // With loopback=1 only 127.0.0.1 and mDNS names leave the page: the agent in the tests listens
  // on 127.0.0.1 and never resolves a name, so nothing is sent to the machine's other addresses.
  function mayShare(address) {
    return !opt.loopback || address === '127.0.0.1' || address.endsWith('.local');
  }

  function outgoingSdp(sdp) {
    if (!opt.loopback) return sdp;
    return sdp.split('\r\n')
      .filter((line) => !line.startsWith('a=candidate:') || mayShare(candidateAddress(line)))
      .join('\r\n');
  }

  function gatheringComplete(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 3000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
      });
    });
  }

  // --- one remote session ----------------------------------------------------------------------

  class Peer {
    constructor(remoteSessionId, remoteUserId) {
      this.remoteSessionId = remoteSessionId;
      this.remoteUserId = remoteUserId;
      this.polite = state.userId > remoteUserId; // the same rule as the agent
      this.makingOffer = false;
      this.ignoreOffer = false;
      this.heldOffer = false;
      this.glareDone = false;
      this.offerMade = new Promise((resolve) => { this.resolveOfferMade = resolve; });
      this.heldCandidates = [];
      this.pending = [];
      this.sendChain = Promise.resolve();
      this.sent = { offers: 0, answers: 0, candidates: 0, endOfCandidates: 0 };
      this.received = { offers: 0, answers: 0, candidates: 0 };
      this.glare = { ignored: 0, rolledBack: 0 };
      this.stats = { audio: {}, video: {}, rttMs: null, path: '' };
      this.openedAt = performance.now();
      this.connectedAt = null;
      this.stream = new MediaStream();
      this.pc = new RTCPeerConnection({ iceServers: state.iceServers });
      this.pc.onicecandidate = ({ candidate }) => this.onLocalCandidate(candidate);
      this.pc.onnegotiationneeded = () => this.negotiate();
      this.pc.ontrack = ({ track }) => this.onTrack(track);
      this.pc.onconnectionstatechange = () => this.onConnectionState();
      this.view = this.makeView();
    }

    get connectionState() { return this.pc.connectionState; }

    makeView() {
      const figure = document.createElement('figure');
      const video = document.createElement('video');
      video.autoplay = true; video.playsInline = true; video.muted = true;
      video.srcObject = this.stream;
      // Chromium decodes received audio only while an element plays it.
      const audio = document.createElement('audio');
      audio.autoplay = true; audio.srcObject = this.stream;
      const caption = document.createElement('figcaption');
      caption.textContent = `${this.remoteUserId.slice(0, 8)} / ${this.remoteSessionId.slice(0, 12)}`;
      figure.append(video, audio, caption);
      $('media').append(figure);
      return figure;
    }

    onTrack(track) {
      this.stream.addTrack(track);
      track.addEventListener('ended', () => this.stream.removeTrack(track));
      log('track', track.kind, 'from', this.remoteSessionId);
    }

    onConnectionState() {
      const s = this.pc.connectionState;
      log('connection', this.remoteSessionId, s);
      if (s === 'connected' && this.connectedAt === null) {
        this.connectedAt = performance.now();
        if (state.connectedAt === null) state.connectedAt = this.connectedAt;
      }
      reportState();
      render();
    }

    send(fn) {
      // Signals of one connection leave in the order they were made.
      this.sendChain = this.sendChain.then(fn).catch((err) => log('send failed:', err.message));
      return this.sendChain;
    }

    sendDescription(description) {
      const kind = description.type;
      const sdp = outgoingSdp(description.sdp);
      this.sent[kind === 'offer' ? 'offers' : 'answers'] += 1;
      state.lastActivity = performance.now();
      return this.send(() => run(SIG + 'exchangeSessionDescription', {
        meetingId: state.meetingId, sessionId: state.sessionId,
        description: { type: kind, sdp }, targetUserId: this.remoteUserId,
      }));
    }

    sendCandidate(init) {
      if (opt.glare && !this.glareDone) {
        this.heldCandidates.push(init); // a held offer holds its candidates too
        return this.sendChain;
      }
      return this.send(() => run(SIG + 'exchangeICECandidate', {
        meetingId: state.meetingId, sessionId: state.sessionId,
        candidate: init, targetUserId: this.remoteUserId,
      }));
    }

    onLocalCandidate(candidate) {
      if (opt.gather) return; // the description carries them
      if (candidate === null) {
        // End of candidates: one marker for the whole (bundled) connection.
        const ufrag = (this.pc.localDescription?.sdp.match(/a=ice-ufrag:(\S+)/) || [])[1];
        const first = this.pc.getTransceivers().find((t) => t.mid !== null);
        const init = { candidate: '', sdpMLineIndex: 0 };
        if (first) init.sdpMid = first.mid;
        if (ufrag) init.usernameFragment = ufrag;
        this.sent.endOfCandidates += 1;
        this.sendCandidate(init);
        return;
      }
      if (!candidate.candidate) return; // a per-section end marker; the null event follows
      if (!mayShare(candidateAddress(candidate.candidate))) return;
      const init = { candidate: candidate.candidate };
      if (candidate.sdpMid !== null) init.sdpMid = candidate.sdpMid;
      if (candidate.sdpMLineIndex !== null) init.sdpMLineIndex = candidate.sdpMLineIndex;
      if (candidate.usernameFragment) init.usernameFragment = candidate.usernameFragment;
      this.sent.candidates += 1;
      this.sendCandidate(init);
    }

    addLocalMedia({ recvOnlyIfNone }) {
      const senders = new Set(this.pc.getSenders().map((s) => s.track).filter(Boolean));
      const tracks = state.localStream ? state.localStream.getTracks() : [];
      for (const track of tracks) {
        if (!senders.has(track)) this.pc.addTrack(track, state.localStream);
      }
      if (recvOnlyIfNone) {
        const kinds = new Set(this.pc.getTransceivers().map((t) => t.receiver.track.kind));
        for (const kind of ['audio', 'video']) {
          if (!kinds.has(kind)) this.pc.addTransceiver(kind, { direction: 'recvonly' });
        }
      }
    }

    async negotiate() {
      try {
        this.makingOffer = true;
        await this.pc.setLocalDescription();
        if (opt.gather) await gatheringComplete(this.pc);
        if (opt.glare && !this.glareDone) {
          this.heldOffer = true; // sent the moment the remote's offer arrives: offers cross
          log('offer held until the remote offers');
          return;
        }
        await this.sendDescription(this.pc.localDescription);
      } catch (err) {
        log('negotiation failed:', err.message);
      } finally {
        this.makingOffer = false;
        this.resolveOfferMade();
      }
    }

    async onDescription(description) {
      const pc = this.pc;
      if (description.type === 'offer') this.received.offers += 1;
      else this.received.answers += 1;
      if (description.type === 'offer' && opt.glare && !this.glareDone) {
        this.glareDone = true; // from now on offers leave at once
        if (this.heldOffer) {
          this.heldOffer = false;
          await this.sendDescription(pc.localDescription);
        }
        for (const init of this.heldCandidates.splice(0)) this.sendCandidate(init);
      }
      if (description.type === 'rollback') {
        if (pc.signalingState === 'have-remote-offer') await pc.setRemoteDescription(description);
        return;
      }
      const collision = description.type === 'offer' &&
        (this.makingOffer || pc.signalingState !== 'stable');
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) {
        this.glare.ignored += 1;
        log('glare: impolite, remote offer ignored');
        return;
      }
      if (collision) {
        this.glare.rolledBack += 1;
        log('glare: polite, rolling back and answering');
      }
      if (description.type !== 'offer' && pc.signalingState !== 'have-local-offer') return;
      await pc.setRemoteDescription({ type: description.type, sdp: description.sdp });
      const pending = this.pending.splice(0);
      for (const init of pending) await this.addRemoteCandidate(init);
      if (description.type === 'offer') {
        this.addLocalMedia({ recvOnlyIfNone: false });
        await pc.setLocalDescription();
        if (opt.gather) await gatheringComplete(pc);
        await this.sendDescription(pc.localDescription);
      }
    }

    async onCandidate(data) {
      this.received.candidates += 1;
      const init = { candidate: data.candidate };
      init.sdpMid = data.sdpMid ?? null;
      init.sdpMLineIndex = data.sdpMLineIndex ?? (data.sdpMid == null ? 0 : null);
      if (data.usernameFragment) init.usernameFragment = data.usernameFragment;
      if (!this.pc.remoteDescription) { this.pending.push(init); return; }
      await this.addRemoteCandidate(init);
    }

    async addRemoteCandidate(init) {
      try {
        await this.pc.addIceCandidate(init);
      } catch (err) {
        if (!this.ignoreOffer) log('candidate not applied:', err.message);
      }
    }

    async collectStats() {
      const report = await this.pc.getStats();
      const stats = { audio: {}, video: {}, rttMs: null, path: '' };
      let pairId = null;
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && (r.kind === 'audio' || r.kind === 'video')) {
          const s = stats[r.kind];
          s.packetsReceived = (s.packetsReceived || 0) + (r.packetsReceived || 0);
          s.bytesReceived = (s.bytesReceived || 0) + (r.bytesReceived || 0);
          if (r.framesDecoded !== undefined) s.framesDecoded = r.framesDecoded;
          if (r.totalAudioEnergy !== undefined) {
            s.totalAudioEnergy = (s.totalAudioEnergy || 0) + r.totalAudioEnergy;
          }
          if (r.framesPerSecond !== undefined) s.fps = r.framesPerSecond;
        } else if (r.type === 'outbound-rtp' && (r.kind === 'audio' || r.kind === 'video')) {
          const s = stats[r.kind];
          s.packetsSent = (s.packetsSent || 0) + (r.packetsSent || 0);
        } else if (r.type === 'transport' && r.selectedCandidatePairId) {
          pairId = r.selectedCandidatePairId;
        }
      });
      const pair = pairId && report.get(pairId);
      if (pair) {
        if (pair.currentRoundTripTime !== undefined) stats.rttMs = pair.currentRoundTripTime * 1000;
        const local = report.get(pair.localCandidateId);
        const remote = report.get(pair.remoteCandidateId);
        if (local && remote) {
          stats.path = `${local.address}:${local.port} ${local.candidateType} -> ` +
            `${remote.address}:${remote.port} ${remote.candidateType}`;
        }
      }
      this.stats = stats;
    }

    close(reason) {
      log('closing', this.remoteSessionId, reason);
      this.pc.close();
      this.view.remove();
      state.peers.delete(this.remoteSessionId);
      state.closedSessions.add(this.remoteSessionId);
      reportState();
      render();
    }
  }

  function openPeer(remoteSessionId, remoteUserId, { calling }) {
    const peer = new Peer(remoteSessionId, remoteUserId);
    state.peers.set(remoteSessionId, peer);
    log(calling ? 'calling' : 'answering', remoteSessionId, peer.polite ? '(polite)' : '(impolite)');
    // An offer from a newer session of the same user replaces the older one (a page reload).
    for (const other of [...state.peers.values()]) {
      if (other !== peer && other.remoteUserId === remoteUserId) other.close('replaced');
    }
    if (calling) peer.addLocalMedia({ recvOnlyIfNone: true }); // negotiationneeded makes the offer
    render();
    return peer;
  }

  // --- signals ---------------------------------------------------------------------------------

  async function handleSignal(signal) {
    if (signal.fromUserId === state.userId) return;
    let peer = state.peers.get(signal.sessionId);
    if (!peer) {
      // Rows do not say whether a signal was a broadcast: any offer (or candidate) from an unknown
      // session opens a connection to it.
      const opens = signal.type === 'ice' || signal.data.type === 'offer';
      if (!opens || state.closedSessions.has(signal.sessionId)) return;
      peer = openPeer(signal.sessionId, signal.fromUserId, { calling: false });
    }
    if (peer.remoteUserId !== signal.fromUserId) return log('signal from the wrong user ignored');
    if (signal.type === 'sdp') await peer.onDescription(signal.data);
    else await peer.onCandidate(signal.data);
  }

  function order(a, b) {
    const rank = (s) => (s.type === 'sdp' ? 0 : 1);
    return a.timestamp - b.timestamp || rank(a) - rank(b) || (a._id < b._id ? -1 : a._id > b._id ? 1 : 0);
  }

  function busy() {
    if (performance.now() - state.lastActivity < 3000) return true;
    for (const peer of state.peers.values()) if (peer.connectionState !== 'connected') return true;
    return false;
  }

  async function pollLoop() {
    while (state.running) {
      let signals = [];
      try {
        signals = await run(SIG + 'getPendingSignals', { meetingId: state.meetingId });
      } catch (err) {
        log('poll failed:', err.message);
        await sleep(1000);
        continue;
      }
      signals.sort(order);
      const done = [];
      for (const signal of signals) {
        if (!state.handled.has(signal._id)) {
          state.lastActivity = performance.now();
          try { await handleSignal(signal); } catch (err) { log('signal failed:', err.message); }
          state.handled.add(signal._id);
        }
        done.push(signal._id);
      }
      if (done.length) {
        try {
          await run(SIG + 'markSignalsProcessed', { signalIds: done });
        } catch (err) {
          log('acknowledgement failed:', err.message);
        }
      }
      await sleep(busy() ? FAST_POLL_MS : IDLE_POLL_MS);
    }
  }

  // --- participants, own state, stats ----------------------------------------------------------

  async function discoverOnce() {
    const sessions = await run(SIG + 'getActiveSessions', { meetingId: state.meetingId });
    state.participants = sessions;
    const present = new Set(sessions.map((s) => s.sessionId));
    for (const peer of [...state.peers.values()]) {
      if (peer.seenActive && !present.has(peer.remoteSessionId)) peer.close('remote left');
      else if (present.has(peer.remoteSessionId)) peer.seenActive = true;
    }
    if (opt.call) {
      const newest = new Map();
      for (const s of sessions) {
        if (s.userId === state.userId) continue;
        if (!newest.has(s.userId) || s.createdAt > newest.get(s.userId).createdAt) newest.set(s.userId, s);
      }
      const known = new Set([...state.peers.values()].map((p) => p.remoteUserId));
      for (const s of newest.values()) {
        if (!known.has(s.userId) && !state.closedSessions.has(s.sessionId)) {
          openPeer(s.sessionId, s.userId, { calling: true }).seenActive = true;
        }
      }
    }
    render();
  }

  async function discoverSafely() {
    try { await discoverOnce(); } catch (err) { log('discovery failed:', err.message); }
  }

  async function discoveryLoop(first) {
    await first;
    while (state.running) {
      await sleep(DISCOVERY_MS);
      await discoverSafely();
    }
  }

  async function reportState() {
    if (!state.running) return;
    const peers = [...state.peers.values()];
    const connected = peers.filter((p) => p.connectionState === 'connected').length;
    const disconnected = peers.some((p) => ['disconnected', 'failed'].includes(p.connectionState));
    const sessionState = connected ? 'connected' : disconnected ? 'disconnected' : 'connecting';
    const key = `${sessionState}/${connected}/${peers.length}`;
    if (key === state.reported) return;
    state.reported = key;
    try {
      await run(SIG + 'updateSessionState', {
        meetingId: state.meetingId, sessionId: state.sessionId, state: sessionState,
        metadata: { peers: peers.length, peersConnected: connected, client: 'join page' },
      });
    } catch (err) {
      log('state report failed:', err.message);
    }
  }

  async function statsLoop() {
    while (state.running) {
      await Promise.all([...state.peers.values()].map((p) => p.collectStats().catch(() => {})));
      render();
      await sleep(STATS_MS);
    }
  }

  function render() {
    const body = $('participants').tBodies[0];
    body.textContent = '';
    const fmt = (v) => (v === undefined || v === null ? '' : String(Math.round(v)));
    for (const s of state.participants) {
      const peer = state.peers.get(s.sessionId);
      const mine = s.sessionId === state.sessionId;
      const row = body.insertRow();
      const cells = [
        (s.user && s.user.displayName) || '', s.userId.slice(0, 10), s.sessionId.slice(0, 16), s.state,
        mine ? '(you)' : peer ? peer.connectionState : '',
        peer ? fmt(peer.stats.audio.packetsReceived) : '',
        peer ? `${fmt(peer.stats.video.packetsReceived)} / ${fmt(peer.stats.video.fps)}` : '',
        peer ? fmt(peer.stats.rttMs) : '', peer ? peer.stats.path : '',
      ];
      for (const text of cells) row.insertCell().textContent = text;
      if (peer) row.cells[4].className = peer.connectionState;
    }
  }

  // --- joining ---------------------------------------------------------------------------------

  // A tone and a moving pattern made in the page: media without asking for the camera and
  // microphone, so the browser keeps hiding its addresses behind mDNS names.
  function syntheticMedia(audio, video) {
    const stream = new MediaStream();
    if (audio) {
      const ctx = new AudioContext();
      const osc = ctx.createOscillator();
      const sink = ctx.createMediaStreamDestination();
      osc.frequency.value = 440;
      osc.connect(sink);
      osc.start();
      ctx.resume();
      sink.stream.getAudioTracks().forEach((t) => stream.addTrack(t));
    }
    if (video) {
      const canvas = document.createElement('canvas');
      canvas.width = 320; canvas.height = 240;
      const g = canvas.getContext('2d');
      let n = 0;
      setInterval(() => {
        g.fillStyle = `hsl(${(n += 7) % 360} 60% 50%)`;
        g.fillRect(0, 0, 320, 240);
        g.fillStyle = '#fff';
        g.fillRect((n * 3) % 300, 100, 20, 40);
      }, 66);
      canvas.captureStream(15).getVideoTracks().forEach((t) => stream.addTrack(t));
    }
    return stream;
  }

  async function getLocalMedia(audio, video) {
    if (!audio && !video) return null;
    if (opt.synthetic) return syntheticMedia(audio, video);
    return navigator.mediaDevices.getUserMedia({
      audio, video: video ? { width: 320, height: 240, frameRate: 15 } : false,
    });
  }

  async function join(meetingId, name, { audio = opt.audio, video = opt.video } = {}) {
    if (state.running) return state.sessionId;
    $('status').textContent = 'joining...';
    const res = await fetch('/dev/token', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name, meeting: meetingId }),
    });
    const issued = await res.json();
    if (!res.ok) throw new Error('token: ' + (issued.message || res.status));
    state.token = issued.token;
    state.meetingId = meetingId;
    const me = await run('users/queries/getCurrentUser', {});
    state.userId = me._id;
    await run('meetings/lifecycle/joinMeeting', { meetingId });
    const info = await run('meetings/lifecycle/getMeetingConnectionInfo', { meetingId });
    state.iceServers = info.connectionInfo.iceServers || [];
    state.localStream = await getLocalMedia(audio, video);
    if (state.localStream) $('local').srcObject = state.localStream;
    state.sessionId = 'page-' + crypto.randomUUID();
    await run(SIG + 'createWebRTCSession', { meetingId, sessionId: state.sessionId });
    state.running = true;
    $('status').textContent = `joined as ${name} (${state.userId.slice(0, 10)})`;
    log('joined', meetingId, 'as', state.userId, 'session', state.sessionId);
    addEventListener('pagehide', () => {
      // Best effort: the others drop this session at once instead of waiting for discovery.
      run(SIG + 'closeSession', { meetingId, sessionId: state.sessionId }, { keepalive: true })
        .catch(() => {});
    });
    const firstDiscovery = discoverSafely();
    if (opt.glare) {
      // The offers to everyone present are made (and held) before any signal is read: a remote
      // offer read first would simply be answered, and nothing would cross.
      await firstDiscovery;
      const offers = Promise.all([...state.peers.values()].map((peer) => peer.offerMade));
      await Promise.race([offers, sleep(5000)]); // bounded, should negotiationneeded never come
      if ([...state.peers.values()].some((peer) => !peer.heldOffer)) {
        log('glare: not every offer is held before reading signals');
      }
    }
    pollLoop();
    discoveryLoop(firstDiscovery);
    statsLoop();
    return state.sessionId;
  }

  async function addVideo() {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: 320, height: 240, frameRate: 15 },
    });
    if (!state.localStream) state.localStream = new MediaStream();
    for (const track of stream.getVideoTracks()) state.localStream.addTrack(track);
    $('local').srcObject = state.localStream;
    for (const peer of state.peers.values()) peer.addLocalMedia({ recvOnlyIfNone: false });
    log('camera added');
  }

  function summary() {
    const peers = {};
    for (const [id, p] of state.peers) {
      peers[id] = {
        remoteUserId: p.remoteUserId, polite: p.polite, connectionState: p.connectionState,
        signalingState: p.pc.signalingState, sent: p.sent, received: p.received, stats: p.stats,
        glare: p.glare,
        connectedAfterMs: p.connectedAt === null ? null : p.connectedAt - p.openedAt,
      };
    }
    return {
      userId: state.userId, sessionId: state.sessionId, connectedAtMs: state.connectedAt,
      peers, participants: state.participants.map((s) => ({ sessionId: s.sessionId, state: s.state })),
    };
  }

  function inbound(kind, remoteSessionId) {
    let total = 0;
    for (const [id, p] of state.peers) {
      if (!remoteSessionId || id === remoteSessionId) total += p.stats[kind].packetsReceived || 0;
    }
    return total;
  }

  window.connvo = { opt, state, join, addVideo, summary, inbound };

  $('meeting').value = opt.meeting;
  if (opt.name) $('name').value = opt.name;
  $('want-audio').checked = opt.audio;
  $('want-video').checked = opt.video;
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    $('join').disabled = true;
    join($('meeting').value.trim(), $('name').value.trim(), {
      audio: $('want-audio').checked, video: $('want-video').checked,
    }).catch((err) => { $('status').textContent = 'failed: ' + err.message; $('join').disabled = false; });
  });
  if (opt.autojoin && opt.meeting && opt.name) {
    $('join').disabled = true;
    join(opt.meeting, opt.name).catch((err) => { $('status').textContent = 'failed: ' + err.message; });
  }
})();
