// Browser side of the real-client test harness (driven by tests/harness/browser.py).
//
// Exposes async functions on `window` that Playwright calls with page.evaluate():
//   join(url, token, opts)  connect a LivekitClient.Room configured like Element Call, publish the
//                           fake camera (VP8, simulcast layers 180/360 + capture size) and mic,
//                           attach every subscribed remote track to a <video>/<audio> element
//                           (opts.red: publish the mic with audio RED; opts.refuseRed: answer
//                           the SFU's offers without RED)
//   stats()                 getStats() summary: remote inbound video/audio, local per-rid outbound
//   resize(target, w, h)    CSS size of the remote <video>s of a track sid or participant identity
//   hide(target) / show(target)
//   setCamera(on) / setMicrophone(on)
//   localEncodings(kind)    the local track's RTCRtpSender.getParameters().encodings per rid
//                           (dynacast: which simulcast layers the publisher has active)
//   leave()                 disconnect and drop all elements
//   startSampler(identity, intervalMs) / takeSamples()
//                           every intervalMs, the inbound-rtp counters of identity's video
//                           and audio (framesDecoded, frame size, bytes, NACK/PLI, samples
//                           received and concealed), stamped with epoch ms; taken and cleared
//                           by takeSamples() (at most 20000 kept)
//   events()                the event log (connection states, subscriptions, errors, E2EE, and
//                           the UpdateTrackSettings / SubscribedQualityUpdate / StreamStateUpdate
//                           signal messages)
// and server-less self-test helpers: harnessInfo(), constructRoom(opts), localCamera(opts),
// localMicrophone(ms), e2eeWorkerCheck(), loopbackCall(opts).
'use strict';

(() => {
  const LK = window.LivekitClient;
  const E2EE_WORKER_PATH = 'node_modules/livekit-client/dist/livekit-client.e2ee.worker.mjs';
  const E2EE_WORKER_URL = new URL(E2EE_WORKER_PATH, document.baseURI).href;
  const t0 = performance.now();
  const eventLog = [];
  const remoteElements = new Map(); // trackSid -> {el, kind, identity}
  const state = { room: null, videoCss: { width: 320, height: 180 }, identity: null };

  const params = new URLSearchParams(location.search);
  if (LK && LK.setLogLevel) LK.setLogLevel(params.get('loglevel') || 'info');

  function errorText(e) {
    if (e === undefined || e === null) return String(e);
    const name = e.name ? `${e.name}: ` : '';
    const reason = e.reasonName ? ` (${e.reasonName})` : e.reason !== undefined ? ` (reason ${e.reason})` : '';
    return `${name}${e.message || String(e)}${reason}`;
  }

  function record(type, detail = {}) {
    const entry = { t: Math.round(performance.now() - t0), type, ...detail };
    eventLog.push(entry);
    if (eventLog.length > 5000) eventLog.splice(0, eventLog.length - 5000);
    console.log(`[harness] ${type} ${JSON.stringify(detail)}`);
  }

  window.addEventListener('error', (ev) => record('WindowError', { error: ev.message }));
  window.addEventListener('unhandledrejection', (ev) =>
    record('UnhandledRejection', { error: errorText(ev.reason) }),
  );

  function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- room options, as Element Call sets them (src/livekit/options.ts) --------------------

  function buildRoomOptions(opts, keyProvider) {
    const capture = opts.capture || { width: 1280, height: 720, frameRate: 30 };
    const options = {
      adaptiveStream: opts.adaptiveStream !== false,
      dynacast: opts.dynacast !== false,
      publishDefaults: {
        simulcast: opts.simulcast !== false,
        videoSimulcastLayers: [LK.VideoPresets.h180, LK.VideoPresets.h360],
        videoCodec: 'vp8',
        videoEncoding: LK.VideoPresets.h720.encoding,
        red: opts.red === true, // Element Call turns RED off; a test may publish with it
        dtx: true,
        stopMicTrackOnMute: false,
      },
      videoCaptureDefaults: { resolution: capture },
      audioCaptureDefaults: { autoGainControl: true, echoCancellation: true, noiseSuppression: true },
    };
    if (keyProvider) {
      options.encryption = {
        keyProvider,
        worker: new Worker(E2EE_WORKER_URL, { type: 'module' }),
      };
    }
    return options;
  }

  function wireRoom(room) {
    const E = LK.RoomEvent;
    const who = (p) => (p ? p.identity : undefined);
    room
      .on(E.SignalConnected, () => record('SignalConnected'))
      .on(E.Connected, () => record('Connected'))
      .on(E.ConnectionStateChanged, (s) => record('ConnectionStateChanged', { state: s }))
      .on(E.Reconnecting, () => record('Reconnecting'))
      .on(E.SignalReconnecting, () => record('SignalReconnecting'))
      .on(E.Reconnected, () => record('Reconnected'))
      .on(E.Disconnected, (reason) => record('Disconnected', { reason }))
      .on(E.ParticipantConnected, (p) => record('ParticipantConnected', { identity: p.identity }))
      .on(E.ParticipantDisconnected, (p) => {
        record('ParticipantDisconnected', { identity: p.identity });
      })
      .on(E.TrackPublished, (pub, p) =>
        record('TrackPublished', { identity: who(p), trackSid: pub.trackSid, kind: pub.kind }),
      )
      .on(E.TrackUnpublished, (pub, p) =>
        record('TrackUnpublished', { identity: who(p), trackSid: pub.trackSid, kind: pub.kind }),
      )
      .on(E.TrackSubscribed, (track, pub, p) => {
        record('TrackSubscribed', {
          identity: who(p),
          trackSid: pub.trackSid,
          kind: track.kind,
          source: pub.source,
          encrypted: pub.isEncrypted,
        });
        attachRemote(track, pub, p);
      })
      .on(E.TrackUnsubscribed, (track, pub, p) => {
        record('TrackUnsubscribed', { identity: who(p), trackSid: pub.trackSid, kind: track.kind });
        detachRemote(track, pub.trackSid);
      })
      .on(E.TrackSubscriptionFailed, (sid, p, reason) =>
        record('TrackSubscriptionFailed', { identity: who(p), trackSid: sid, reason }),
      )
      .on(E.TrackMuted, (pub, p) => record('TrackMuted', { identity: who(p), trackSid: pub.trackSid }))
      .on(E.TrackUnmuted, (pub, p) =>
        record('TrackUnmuted', { identity: who(p), trackSid: pub.trackSid }),
      )
      .on(E.TrackStreamStateChanged, (pub, streamState, p) =>
        record('TrackStreamStateChanged', { identity: who(p), trackSid: pub.trackSid, streamState }),
      )
      .on(E.LocalTrackPublished, (pub) =>
        record('LocalTrackPublished', { trackSid: pub.trackSid, kind: pub.kind, source: pub.source }),
      )
      .on(E.LocalTrackUnpublished, (pub) =>
        record('LocalTrackUnpublished', { trackSid: pub.trackSid, kind: pub.kind }),
      )
      .on(E.MediaDevicesError, (e) => record('MediaDevicesError', { error: errorText(e) }))
      .on(E.EncryptionError, (e, p) => record('EncryptionError', { error: errorText(e), identity: who(p) }))
      .on(E.ParticipantEncryptionStatusChanged, (encrypted, p) =>
        record('ParticipantEncryptionStatusChanged', { encrypted, identity: who(p) }),
      )
      .on(E.AudioPlaybackStatusChanged, () =>
        record('AudioPlaybackStatusChanged', { canPlaybackAudio: room.canPlaybackAudio }),
      );
  }

  // Record the adaptive-stream / dynacast signal traffic in the event log: every
  // UpdateTrackSettings this client sends and every SubscribedQualityUpdate it receives.
  function instrumentSignal(room) {
    const engine = room.engine;
    const client = engine && engine.client;
    if (client && typeof client.sendUpdateTrackSettings === 'function') {
      const send = client.sendUpdateTrackSettings.bind(client);
      client.sendUpdateTrackSettings = (settings) => {
        record('UpdateTrackSettings', {
          trackSids: [...(settings.trackSids || [])],
          disabled: settings.disabled,
          quality: settings.quality,
          width: settings.width,
          height: settings.height,
          fps: settings.fps,
          priority: settings.priority,
        });
        return send(settings);
      };
    } else {
      record('InstrumentError', { error: 'engine.client.sendUpdateTrackSettings not found' });
    }
    if (engine && typeof engine.on === 'function') {
      engine.on('subscribedQualityUpdate', (update) => {
        const qualities = (list) =>
          (list || []).map((q) => ({ quality: q.quality, enabled: q.enabled }));
        record('SubscribedQualityUpdate', {
          trackSid: update.trackSid,
          codecs: (update.subscribedCodecs || []).map((c) => ({
            codec: c.codec,
            qualities: qualities(c.qualities),
          })),
          qualities: qualities(update.subscribedQualities),
        });
      });
      // Every StreamStateUpdate as received: livekit-client 2.21.0 sets the new state before
      // comparing it with the old one, so its TrackStreamStateChanged event never fires.
      engine.on('streamStateChanged', (update) => {
        for (const s of update.streamStates || []) {
          record('StreamStateUpdate', {
            participantSid: s.participantSid,
            trackSid: s.trackSid,
            state: s.state === 1 ? 'paused' : s.state === 0 ? 'active' : String(s.state),
          });
        }
      });
    }
  }

  function attachRemote(track, pub, participant) {
    detachRemote(track, pub.trackSid);
    const el = track.attach();
    el.dataset.trackSid = pub.trackSid;
    el.dataset.identity = participant.identity;
    el.dataset.kind = track.kind;
    if (track.kind === 'video') {
      el.muted = true;
      el.playsInline = true;
      el.style.width = `${state.videoCss.width}px`;
      el.style.height = `${state.videoCss.height}px`;
    }
    document.getElementById('remote').appendChild(el);
    remoteElements.set(pub.trackSid, { el, kind: track.kind, identity: participant.identity });
    const played = el.play && el.play();
    if (played && played.catch) {
      played.catch((e) => record('PlayError', { trackSid: pub.trackSid, error: errorText(e) }));
    }
  }

  function detachRemote(track, trackSid) {
    const entry = remoteElements.get(trackSid);
    if (!entry) return;
    try {
      track.detach(entry.el);
    } catch (e) {
      record('DetachError', { trackSid, error: errorText(e) });
    }
    entry.el.remove();
    remoteElements.delete(trackSid);
  }

  function elementsFor(target) {
    return [...remoteElements.entries()]
      .filter(([sid, entry]) => sid === target || entry.identity === target)
      .map(([, entry]) => entry);
  }

  // ---- the test API -------------------------------------------------------------------------

  // A subscriber that does not take audio RED: every answer is created after setting the audio
  // transceivers' codec preferences without it, so the SFU must send it plain Opus.
  function refuseRed() {
    if (refuseRed.done) return;
    refuseRed.done = true;
    const createAnswer = RTCPeerConnection.prototype.createAnswer;
    const codecs = RTCRtpReceiver.getCapabilities('audio').codecs.filter(
      (c) => c.mimeType.toLowerCase() !== 'audio/red');
    RTCPeerConnection.prototype.createAnswer = function (...args) {
      for (const t of this.getTransceivers()) {
        if (t.receiver.track && t.receiver.track.kind === 'audio' && !t.stopped) {
          t.setCodecPreferences(codecs);
        }
      }
      return createAnswer.apply(this, args);
    };
  }

  async function join(url, token, opts = {}) {
    if (state.room) throw new Error('already joined; call leave() first');
    if (opts.refuseRed) refuseRed();
    if (opts.videoCss) state.videoCss = opts.videoCss;
    let keyProvider = null;
    if (opts.e2eeKey) keyProvider = new LK.ExternalE2EEKeyProvider();
    const room = new LK.Room(buildRoomOptions(opts, keyProvider));
    state.room = room;
    wireRoom(room);
    instrumentSignal(room);
    if (keyProvider) {
      await keyProvider.setKey(opts.e2eeKey);
      await room.setE2EEEnabled(true);
    }
    const connectOptions = { autoSubscribe: opts.autoSubscribe !== false };
    // e.g. { iceTransportPolicy: 'relay' }; without iceServers here livekit-client keeps the
    // JoinResponse's ICE servers
    if (opts.rtcConfig) connectOptions.rtcConfig = opts.rtcConfig;
    await withTimeout(room.connect(url, token, connectOptions), opts.timeoutMs || 30000, 'room.connect');
    state.identity = room.localParticipant.identity;
    record('Joined', {
      identity: room.localParticipant.identity,
      sid: room.localParticipant.sid,
      room: room.name,
      serverVersion: room.serverInfo ? room.serverInfo.version : undefined,
      e2ee: room.isE2EEEnabled,
    });
    if (opts.video !== false) {
      await withTimeout(room.localParticipant.setCameraEnabled(true), 20000, 'publish camera');
    }
    if (opts.audio !== false) {
      await withTimeout(room.localParticipant.setMicrophoneEnabled(true), 20000, 'publish microphone');
    }
    return {
      identity: room.localParticipant.identity,
      sid: room.localParticipant.sid,
      room: room.name,
      e2ee: room.isE2EEEnabled,
      published: [...room.localParticipant.trackPublications.values()].map((p) => ({
        trackSid: p.trackSid,
        kind: p.kind,
        source: p.source,
        simulcasted: p.simulcasted,
        encrypted: p.isEncrypted,
      })),
    };
  }

  function pick(obj, keys) {
    const out = {};
    for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
    return out;
  }

  const INBOUND_VIDEO_KEYS = [
    'ssrc', 'framesDecoded', 'framesReceived', 'framesDropped', 'frameWidth', 'frameHeight',
    'framesPerSecond', 'freezeCount', 'totalFreezesDuration', 'pauseCount', 'keyFramesDecoded',
    'packetsReceived', 'packetsLost', 'bytesReceived', 'nackCount', 'pliCount', 'firCount',
    'jitter', 'decoderImplementation',
  ];
  const INBOUND_AUDIO_KEYS = [
    'ssrc', 'totalSamplesReceived', 'totalAudioEnergy', 'totalSamplesDuration', 'audioLevel',
    'concealedSamples', 'silentConcealedSamples', 'concealmentEvents', 'packetsReceived',
    'packetsLost', 'bytesReceived', 'jitter', 'jitterBufferDelay', 'jitterBufferEmittedCount',
  ];
  const OUTBOUND_KEYS = [
    'ssrc', 'rid', 'active', 'frameWidth', 'frameHeight', 'framesPerSecond', 'framesEncoded',
    'framesSent', 'keyFramesEncoded', 'bytesSent', 'packetsSent', 'targetBitrate',
    'qualityLimitationReason', 'encoderImplementation', 'scalabilityMode', 'nackCount',
    'pliCount', 'firCount', 'retransmittedPacketsSent',
  ];

  function codecOf(report, entry) {
    const codec = entry.codecId ? report.get(entry.codecId) : undefined;
    return codec ? codec.mimeType : undefined;
  }

  // Pure functions of an RTCStatsReport, shared by stats() and the loopback self-test.
  function inboundSummary(report, kind) {
    const out = [];
    if (!report) return out;
    for (const s of report.values()) {
      if (s.type !== 'inbound-rtp' || s.kind !== kind) continue;
      const entry = pick(s, kind === 'video' ? INBOUND_VIDEO_KEYS : INBOUND_AUDIO_KEYS);
      entry.codec = codecOf(report, s);
      out.push(entry);
    }
    return out;
  }

  function outboundSummary(report, kind) {
    const out = [];
    if (!report) return out;
    for (const s of report.values()) {
      if (s.type !== 'outbound-rtp' || s.kind !== kind) continue;
      const entry = pick(s, OUTBOUND_KEYS);
      entry.codec = codecOf(report, s);
      out.push(entry);
    }
    out.sort((a, b) => (a.frameHeight || 0) - (b.frameHeight || 0) || String(a.rid).localeCompare(String(b.rid)));
    return out;
  }

  function elementSummary(el) {
    if (!el) return null;
    const info = {
      tag: el.tagName.toLowerCase(),
      paused: el.paused,
      readyState: el.readyState,
      currentTime: el.currentTime,
      cssWidth: el.clientWidth,
      cssHeight: el.clientHeight,
      hidden: el.style.display === 'none',
    };
    if (info.tag === 'video') {
      info.videoWidth = el.videoWidth;
      info.videoHeight = el.videoHeight;
      if (el.getVideoPlaybackQuality) {
        const q = el.getVideoPlaybackQuality();
        info.totalVideoFrames = q.totalVideoFrames;
        info.droppedVideoFrames = q.droppedVideoFrames;
      }
    }
    return info;
  }

  async function stats() {
    const room = state.room;
    const out = { now: Math.round(performance.now() - t0), connected: false, remote: [], local: [] };
    if (!room) return out;
    out.connected = room.state === 'connected';
    out.state = room.state;
    out.identity = room.localParticipant.identity;
    out.e2ee = room.isE2EEEnabled;
    out.canPlaybackAudio = room.canPlaybackAudio;
    for (const p of room.remoteParticipants.values()) {
      for (const pub of p.trackPublications.values()) {
        const entry = {
          identity: p.identity,
          participantEncrypted: p.isEncrypted,
          trackSid: pub.trackSid,
          kind: pub.kind,
          source: pub.source,
          subscribed: pub.isSubscribed,
          muted: pub.isMuted,
          encrypted: pub.isEncrypted,
          simulcasted: pub.simulcasted,
          dimensions: pub.dimensions,
          inbound: [],
        };
        const track = pub.track;
        if (track) {
          entry.streamState = track.streamState;
          try {
            entry.inbound = inboundSummary(await track.getRTCStatsReport(), pub.kind);
          } catch (e) {
            entry.statsError = errorText(e);
          }
        }
        const el = remoteElements.get(pub.trackSid);
        entry.element = el ? elementSummary(el.el) : null;
        out.remote.push(entry);
      }
    }
    for (const pub of room.localParticipant.trackPublications.values()) {
      const entry = {
        trackSid: pub.trackSid,
        kind: pub.kind,
        source: pub.source,
        muted: pub.isMuted,
        encrypted: pub.isEncrypted,
        simulcasted: pub.simulcasted,
        outbound: [],
      };
      const track = pub.track;
      if (track && track.sender) {
        try {
          entry.outbound = outboundSummary(await track.sender.getStats(), pub.kind);
        } catch (e) {
          entry.statsError = errorText(e);
        }
      }
      out.local.push(entry);
    }
    return out;
  }

  function localEncodings(kind = 'video') {
    const room = state.room;
    const out = [];
    if (!room) return out;
    for (const pub of room.localParticipant.trackPublications.values()) {
      const track = pub.track;
      if (pub.kind !== kind || !track || !track.sender) continue;
      const params = track.sender.getParameters();
      for (const e of params.encodings || []) {
        out.push({
          trackSid: pub.trackSid,
          rid: e.rid,
          active: e.active,
          maxBitrate: e.maxBitrate,
          maxFramerate: e.maxFramerate,
          scaleResolutionDownBy: e.scaleResolutionDownBy,
        });
      }
    }
    return out;
  }

  function resize(target, width, height) {
    const els = elementsFor(target).filter((e) => e.kind === 'video');
    for (const e of els) {
      e.el.style.width = `${width}px`;
      e.el.style.height = `${height}px`;
    }
    record('Resize', { target, width, height, elements: els.length });
    return els.length;
  }

  function hide(target) {
    const els = elementsFor(target).filter((e) => e.kind === 'video');
    for (const e of els) e.el.style.display = 'none';
    record('Hide', { target, elements: els.length });
    return els.length;
  }

  function show(target) {
    const els = elementsFor(target).filter((e) => e.kind === 'video');
    for (const e of els) e.el.style.display = '';
    record('Show', { target, elements: els.length });
    return els.length;
  }

  async function setCamera(enabled) {
    await withTimeout(state.room.localParticipant.setCameraEnabled(enabled), 20000, 'setCameraEnabled');
    return true;
  }

  async function setMicrophone(enabled) {
    await withTimeout(state.room.localParticipant.setMicrophoneEnabled(enabled), 20000, 'setMicrophoneEnabled');
    return true;
  }

  // ---- receive counters sampled in the page (tests/harness/quality.py reads them) -------------

  const sampler = { timer: null, busy: false, samples: [] };
  const SAMPLES_KEPT = 20000;

  async function sampleOnce(identity) {
    const room = state.room;
    if (!room) return;
    const p = [...room.remoteParticipants.values()].find((x) => x.identity === identity);
    if (!p) return;
    const out = { at: performance.timeOrigin + performance.now(), video: null, audio: null };
    for (const pub of p.trackPublications.values()) {
      if (!pub.track || (pub.kind !== 'video' && pub.kind !== 'audio')) continue;
      const report = await pub.track.getRTCStatsReport();
      if (!report) continue;
      // one inbound-rtp per subscribed track: the SFU forwards one SSRC whatever the layer
      const s = [...report.values()].find((x) => x.type === 'inbound-rtp' && x.kind === pub.kind);
      if (!s) continue;
      out[pub.kind] = pick(s, pub.kind === 'video' ? INBOUND_VIDEO_KEYS : INBOUND_AUDIO_KEYS);
      if (pub.kind === 'video') out.video.streamState = pub.track.streamState;
    }
    sampler.samples.push(out);
    if (sampler.samples.length > SAMPLES_KEPT) sampler.samples.splice(0, sampler.samples.length - SAMPLES_KEPT);
  }

  function startSampler(identity, intervalMs = 200) {
    if (sampler.timer) clearInterval(sampler.timer);
    sampler.timer = setInterval(() => {
      if (sampler.busy) return;
      sampler.busy = true;
      sampleOnce(identity)
        .catch((e) => record('SamplerError', { error: errorText(e) }))
        .finally(() => { sampler.busy = false; });
    }, intervalMs);
    record('SamplerStarted', { identity, intervalMs });
    return true;
  }

  function takeSamples() {
    const out = sampler.samples;
    sampler.samples = [];
    return out;
  }

  async function leave() {
    if (sampler.timer) clearInterval(sampler.timer);
    sampler.timer = null;
    const room = state.room;
    if (!room) return eventLog.slice();
    state.room = null;
    try {
      await withTimeout(room.disconnect(true), 10000, 'room.disconnect');
    } catch (e) {
      record('LeaveError', { error: errorText(e) });
    }
    for (const [sid, entry] of remoteElements) {
      entry.el.remove();
      remoteElements.delete(sid);
    }
    record('Left');
    return eventLog.slice();
  }

  // ---- self-test helpers (no server needed) ---------------------------------------------------

  function harnessInfo() {
    return {
      livekitClientVersion: LK.version,
      protocolVersion: LK.protocolVersion,
      e2eeSupported: LK.isE2EESupported(),
      scriptTransformSupported: LK.isScriptTransformSupported ? LK.isScriptTransformSupported() : null,
      e2eeWorkerUrl: E2EE_WORKER_URL,
      userAgent: navigator.userAgent,
      secureContext: window.isSecureContext,
    };
  }

  async function constructRoom(opts = {}) {
    const keyProvider = opts.e2eeKey ? new LK.ExternalE2EEKeyProvider() : null;
    const room = new LK.Room(buildRoomOptions(opts, keyProvider));
    wireRoom(room);
    if (keyProvider) {
      await keyProvider.setKey(opts.e2eeKey);
      await room.setE2EEEnabled(true);
    }
    const result = {
      constructed: room instanceof LK.Room,
      state: room.state,
      e2eeManager: Boolean(room.e2eeManager),
      simulcast: room.options.publishDefaults.simulcast,
      videoCodec: room.options.publishDefaults.videoCodec,
      layers: room.options.publishDefaults.videoSimulcastLayers.map((p) => p.height),
      adaptiveStream: Boolean(room.options.adaptiveStream),
      dynacast: room.options.dynacast,
    };
    await room.disconnect();
    return result;
  }

  async function waitForFrames(video, count, ms) {
    const start = performance.now();
    while (performance.now() - start < ms) {
      const q = video.getVideoPlaybackQuality();
      if (q.totalVideoFrames >= count && video.videoWidth > 0) return q.totalVideoFrames;
      await sleep(50);
    }
    throw new Error(`video did not render ${count} frames in ${ms} ms`);
  }

  async function localCamera(opts = {}) {
    const resolution = opts.resolution || { width: 1280, height: 720, frameRate: 30 };
    const track = await withTimeout(LK.createLocalVideoTrack({ resolution }), 10000, 'createLocalVideoTrack');
    try {
      const el = track.attach();
      el.muted = true;
      el.style.width = '320px';
      el.style.height = '180px';
      document.getElementById('local').appendChild(el);
      await el.play();
      const first = await waitForFrames(el, 5, 10000);
      await sleep(500);
      const later = el.getVideoPlaybackQuality().totalVideoFrames;
      const result = {
        videoWidth: el.videoWidth,
        videoHeight: el.videoHeight,
        framesFirst: first,
        framesLater: later,
        settings: track.mediaStreamTrack.getSettings(),
        label: track.mediaStreamTrack.label,
      };
      track.detach(el);
      el.remove();
      return result;
    } finally {
      track.stop();
    }
  }

  async function localMicrophone(ms = 1500) {
    const track = await withTimeout(LK.createLocalAudioTrack(), 10000, 'createLocalAudioTrack');
    const ctx = new AudioContext();
    try {
      const source = ctx.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 2048;
      source.connect(analyser);
      const buf = new Float32Array(analyser.fftSize);
      let peak = 0;
      const start = performance.now();
      while (performance.now() - start < ms) {
        analyser.getFloatTimeDomainData(buf);
        for (const v of buf) peak = Math.max(peak, Math.abs(v));
        await sleep(20);
      }
      return { peak, label: track.mediaStreamTrack.label, readyState: track.mediaStreamTrack.readyState };
    } finally {
      await ctx.close();
      track.stop();
    }
  }

  async function e2eeWorkerCheck() {
    const worker = new Worker(E2EE_WORKER_URL, { type: 'module' });
    try {
      const reply = await withTimeout(
        new Promise((resolve, reject) => {
          worker.onmessage = (ev) => resolve(ev.data);
          worker.onerror = (ev) => reject(new Error(`worker error: ${ev.message || 'load failed'}`));
          worker.postMessage({
            kind: 'init',
            data: {
              keyProviderOptions: {
                sharedKey: true,
                ratchetSalt: 'harness',
                ratchetWindowSize: 0,
                failureTolerance: -1,
                keyringSize: 16,
                keySize: 128,
              },
              loglevel: 'warn',
            },
          });
        }),
        5000,
        'E2EE worker init',
      );
      return { url: E2EE_WORKER_URL, reply };
    } finally {
      worker.terminate();
    }
  }

  // Two RTCPeerConnections in this page, fake camera + mic from one to the other over loopback:
  // proves --allow-loopback-in-peer-connection works and exercises the stats summaries.
  async function loopbackCall(opts = {}) {
    const ms = opts.timeoutMs || 15000;
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 360, frameRate: 30 },
      audio: true,
    });
    const a = new RTCPeerConnection();
    const b = new RTCPeerConnection();
    const candidates = { a: [], b: [] };
    a.onicecandidate = (ev) => ev.candidate && (candidates.a.push(ev.candidate.candidate), b.addIceCandidate(ev.candidate));
    b.onicecandidate = (ev) => ev.candidate && (candidates.b.push(ev.candidate.candidate), a.addIceCandidate(ev.candidate));
    const received = [];
    const video = document.createElement('video');
    video.muted = true;
    video.style.width = '320px';
    video.style.height = '180px';
    document.getElementById('local').appendChild(video);
    // Remote audio is only pulled (and counted in totalSamplesReceived) while something plays it.
    const audio = document.createElement('audio');
    audio.autoplay = true;
    document.getElementById('local').appendChild(audio);
    b.ontrack = (ev) => {
      received.push(ev.track.kind);
      const el = ev.track.kind === 'video' ? video : audio;
      el.srcObject = new MediaStream([ev.track]);
      el.play().catch((e) => record('PlayError', { kind: ev.track.kind, error: errorText(e) }));
    };
    try {
      for (const track of stream.getTracks()) a.addTrack(track, stream);
      await a.setLocalDescription();
      await b.setRemoteDescription(a.localDescription);
      await b.setLocalDescription();
      await a.setRemoteDescription(b.localDescription);
      const start = performance.now();
      let inboundVideo = [];
      let inboundAudio = [];
      while (performance.now() - start < ms) {
        const report = await b.getStats();
        inboundVideo = inboundSummary(report, 'video');
        inboundAudio = inboundSummary(report, 'audio');
        if (inboundVideo.length && inboundVideo[0].framesDecoded >= 30 && inboundAudio.length &&
            inboundAudio[0].totalAudioEnergy > 0) break;
        await sleep(200);
      }
      const sendReport = await a.getStats();
      return {
        connectionState: b.connectionState,
        candidates,
        received,
        inboundVideo,
        inboundAudio,
        outboundVideo: outboundSummary(sendReport, 'video'),
        outboundAudio: outboundSummary(sendReport, 'audio'),
        element: elementSummary(video),
        audioElement: elementSummary(audio),
      };
    } finally {
      a.close();
      b.close();
      for (const t of stream.getTracks()) t.stop();
      video.remove();
      audio.remove();
    }
  }

  // The selected ICE candidate pair of each peer connection (publisher, subscriber): whether
  // media goes through a TURN relay, and over which protocol to it.
  async function iceRoutes() {
    const manager = state.room && state.room.engine ? state.room.engine.pcManager : null;
    const out = {};
    for (const name of ['publisher', 'subscriber']) {
      const transport = manager ? manager[name] : null;
      if (!transport) continue;
      const report = await transport.getStats();
      const byId = new Map();
      report.forEach((s) => byId.set(s.id, s));
      let pair = null;
      report.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      });
      if (!pair) {
        report.forEach((s) => { if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
      }
      if (!pair) { out[name] = null; continue; }
      const local = byId.get(pair.localCandidateId) || {};
      const remote = byId.get(pair.remoteCandidateId) || {};
      out[name] = {
        state: pair.state,
        bytesSent: pair.bytesSent,
        bytesReceived: pair.bytesReceived,
        local: { type: local.candidateType, protocol: local.protocol, relayProtocol: local.relayProtocol, address: local.address, port: local.port, url: local.url },
        remote: { type: remote.candidateType, protocol: remote.protocol, address: remote.address, port: remote.port },
      };
    }
    return out;
  }

  Object.assign(window, {
    join,
    stats,
    iceRoutes,
    resize,
    hide,
    show,
    setCamera,
    setMicrophone,
    localEncodings,
    leave,
    startSampler,
    takeSamples,
    events: () => eventLog.slice(),
    harnessInfo,
    constructRoom,
    localCamera,
    localMicrophone,
    e2eeWorkerCheck,
    loopbackCall,
  });
  window.harnessReady = Boolean(LK);
  document.getElementById('status').textContent = LK ? `ready (livekit-client ${LK.version})` : 'livekit-client missing';
  record('HarnessReady', { livekitClient: LK ? LK.version : null });
})();
