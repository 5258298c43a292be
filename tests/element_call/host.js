// The host side of the Matrix widget API for Element Call's widget build, as a Matrix client
// (Element Web) provides it: a WidgetDriver over the client-server API (fetch with the user's
// access token) and a /sync loop that feeds the room's events, state and to-device messages to
// the widget. Driven by tests/harness/element_call.py; the functions on window:
//
//   startCall(opts)  opts: {homeserver, accessToken, userId, deviceId, roomId, widgetId?};
//                    embeds Element Call in #call and resolves once its widget API is ready
//                    (capabilities approved)
//   hangUp()         asks Element Call to leave the call (im.vector.hangup, as a client's
//                    hang-up button does)
//   hostEvents()     what the host saw: widget actions, driver calls, errors (bounded)
//   stopCall()       stops the /sync loop and unloads the widget
//
// To-device messages the widget asks to have encrypted are sent as they are: this host has no
// Olm machine. Element Web encrypts them; either way the SFU sees only E2EE media frames.
"use strict";

(() => {
  const W = window.mxwidgets;
  const EC_PATH = "node_modules/@element-hq/element-call-embedded/dist/index.html";
  const EVENTS_KEPT = 2000;
  const SYNC_TIMEOUT_MS = 5000;
  const events = [];
  let state = null; // the running call: {opts, api, iframe, abort}

  function record(type, fields = {}) {
    events.push({ type, at: Date.now(), ...fields });
    if (events.length > EVENTS_KEPT) events.splice(0, events.length - EVENTS_KEPT);
  }

  function setStatus(text) {
    document.getElementById("status").textContent = text;
  }

  class MatrixHttpError extends Error {
    constructor(status, url, body) {
      super(`${status} from ${url}: ${JSON.stringify(body)}`);
      this.status = status;
      this.url = url;
      this.body = body;
    }
  }

  let txnCounter = 0;
  const txnId = () => `host${Date.now()}.${txnCounter++}`;
  const enc = encodeURIComponent;

  async function matrix(method, path, body, query, signal) {
    const { homeserver, accessToken } = state.opts;
    const url = new URL(homeserver.replace(/\/$/, "") + path);
    for (const [k, v] of Object.entries(query || {})) url.searchParams.set(k, String(v));
    const response = await fetch(url, {
      method,
      headers: {
        Authorization: `Bearer ${accessToken}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    const text = await response.text();
    let parsed = {};
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      parsed = { errcode: "M_UNKNOWN", error: text.slice(0, 200) };
    }
    if (!response.ok) throw new MatrixHttpError(response.status, url.pathname, parsed);
    return parsed;
  }

  const roomPath = (roomId, rest) => `/_matrix/client/v3/rooms/${enc(roomId)}/${rest}`;

  class HostDriver extends W.WidgetDriver {
    async validateCapabilities(requested) {
      record("capabilities", { requested: [...requested] });
      return new Set(requested); // the user approves everything Element Call asks for
    }

    async sendEvent(eventType, content, stateKey = null, roomId = null) {
      roomId = roomId || state.opts.roomId;
      const path =
        stateKey === null
          ? roomPath(roomId, `send/${enc(eventType)}/${enc(txnId())}`)
          : roomPath(roomId, `state/${enc(eventType)}/${enc(stateKey)}`);
      const answer = await matrix("PUT", path, content);
      record("sent", { eventType, stateKey, eventId: answer.event_id });
      return { roomId, eventId: answer.event_id };
    }

    async sendDelayedEvent(delay, eventType, content, stateKey = null, roomId = null) {
      roomId = roomId || state.opts.roomId;
      const path =
        stateKey === null
          ? roomPath(roomId, `send/${enc(eventType)}/${enc(txnId())}`)
          : roomPath(roomId, `state/${enc(eventType)}/${enc(stateKey)}`);
      const answer = await matrix("PUT", path, content, { "org.matrix.msc4140.delay": delay });
      record("delayed", { eventType, stateKey, delay, delayId: answer.delay_id });
      return { roomId, delayId: answer.delay_id };
    }

    async updateDelayed(delayId, action) {
      await matrix("POST", `/_matrix/client/unstable/org.matrix.msc4140/delayed_events/${enc(delayId)}`, {
        action,
      });
      record("delayed_update", { delayId, action });
    }

    cancelScheduledDelayedEvent(delayId) {
      return this.updateDelayed(delayId, "cancel");
    }

    restartScheduledDelayedEvent(delayId) {
      return this.updateDelayed(delayId, "restart");
    }

    sendScheduledDelayedEvent(delayId) {
      return this.updateDelayed(delayId, "send");
    }

    async sendToDevice(eventType, encrypted, contentMap) {
      await matrix("PUT", `/_matrix/client/v3/sendToDevice/${enc(eventType)}/${enc(txnId())}`, {
        messages: contentMap,
      });
      const targets = Object.entries(contentMap).flatMap(([u, d]) => Object.keys(d).map((x) => `${u}/${x}`));
      record("to_device_sent", { eventType, encrypted, targets });
    }

    async readRoomState(roomId, eventType, stateKey) {
      const all = await matrix("GET", roomPath(roomId, "state"));
      return all
        .filter((e) => e.type === eventType && (stateKey === undefined || e.state_key === stateKey))
        .map((e) => ({ ...e, room_id: roomId }));
    }

    async readRoomTimeline() {
      return []; // Element Call reads call state, never history
    }

    async readStickyEvents() {
      return []; // the compatibility MatrixRTC mode keeps memberships in room state
    }

    askOpenID(observer) {
      const { userId } = state.opts;
      matrix("POST", `/_matrix/client/v3/user/${enc(userId)}/openid/request_token`, {}).then(
        (token) => {
          record("openid", { expires_in: token.expires_in });
          observer.update({ state: W.OpenIDRequestState.Allowed, token });
        },
        (error) => {
          record("error", { where: "openid", message: String(error) });
          observer.update({ state: W.OpenIDRequestState.Blocked });
        },
      );
    }

    async getRtcTransports() {
      const answer = await matrix("GET", "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports");
      record("rtc_transports", { transports: answer.rtc_transports });
      return { rtc_transports: answer.rtc_transports };
    }

    getKnownRooms() {
      return [state.opts.roomId];
    }

    processError(error) {
      if (!(error instanceof MatrixHttpError)) return undefined;
      record("matrix_error", { status: error.status, url: error.url, body: error.body });
      return {
        matrix_api_error: {
          http_status: error.status,
          http_headers: {},
          url: error.url,
          response: { errcode: "M_UNKNOWN", error: "", ...error.body },
        },
      };
    }
  }

  // Actions Element Call sends that only a real client's UI acts on: acknowledged.
  const ACKNOWLEDGED = [
    "set_always_on_screen",
    "io.element.device_mute",
    "io.element.join",
    "im.vector.hangup",
    "io.element.close",
    "io.element.tile_layout",
    "io.element.spotlight_layout",
    "im.vector.ringing",
    "io.element.call_state",
  ];

  async function feedSync(api, roomId, body) {
    for (const message of body.to_device?.events || []) {
      record("to_device_received", { eventType: message.type, sender: message.sender });
      await api.feedToDevice({ type: message.type, sender: message.sender, content: message.content }, false);
    }
    const room = body.rooms?.join?.[roomId];
    if (!room) return;
    for (const event of room.state?.events || []) {
      await api.feedStateUpdate({ ...event, room_id: roomId });
    }
    for (const event of room.timeline?.events || []) {
      const full = { ...event, room_id: roomId };
      await api.feedEvent(full);
      if (event.state_key !== undefined) await api.feedStateUpdate(full);
    }
  }

  async function syncLoop(api, since, signal) {
    const { roomId } = state.opts;
    const filter = JSON.stringify({
      presence: { not_types: ["*"] },
      account_data: { not_types: ["*"] },
      room: { rooms: [roomId], timeline: { limit: 50 }, account_data: { not_types: ["*"] } },
    });
    while (!signal.aborted) {
      try {
        const body = await matrix("GET", "/_matrix/client/v3/sync", undefined, { filter, since, timeout: SYNC_TIMEOUT_MS }, signal);
        since = body.next_batch;
        await feedSync(api, roomId, body);
      } catch (error) {
        if (signal.aborted) return;
        record("error", { where: "sync", message: String(error) });
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    }
  }

  function elementCallUrl(opts) {
    const params = new URLSearchParams({
      widgetId: opts.widgetId,
      parentUrl: window.location.href.split("#")[0],
      roomId: opts.roomId,
      userId: opts.userId,
      deviceId: opts.deviceId,
      baseUrl: opts.homeserver,
      intent: "join_existing",
      skipLobby: "true",
      preload: "false",
      confineToRoom: "true",
      header: "none",
      theme: "dark",
      lang: "en",
      sendNotificationType: "notification",
    });
    // E2EE: per participant, as Element Web starts it in an encrypted room (the room's
    // m.room.encryption state is what turns it on; the flag is the intent's default anyway).
    params.set("perParticipantE2EE", "true");
    return new URL(`${EC_PATH}#?${params}`, window.location.href).href;
  }

  window.startCall = async (opts) => {
    if (state) throw new Error("a call is already running");
    opts = { widgetId: `ec-${Math.random().toString(36).slice(2, 10)}`, ...opts };
    state = { opts, abort: new AbortController() };
    // The sync token from before the widget starts: later events are fed, earlier ones are
    // room state the widget API pushes when it approves the capabilities.
    const first = await matrix("GET", "/_matrix/client/v3/sync", undefined, { timeout: 0 });
    const url = elementCallUrl(opts);
    const widget = new W.Widget({
      id: opts.widgetId,
      creatorUserId: opts.userId,
      type: "m.call",
      url,
      waitForIframeLoad: false, // Element Call says when it is ready (content_loaded)
      data: {},
    });
    const iframe = document.getElementById("call");
    const api = new W.ClientWidgetApi(widget, iframe, new HostDriver());
    state.api = api;
    api.setViewedRoomId(opts.roomId);
    for (const action of ACKNOWLEDGED) {
      api.on(`action:${action}`, (ev) => {
        ev.preventDefault();
        record("widget_action", { action, data: ev.detail.data });
        api.transport.reply(ev.detail, {});
      });
    }
    const ready = new Promise((resolve, reject) => {
      api.once("ready", resolve);
      api.once("error:preparing", reject);
    });
    api.on("ready", () => record("ready"));
    iframe.src = url;
    setStatus(`widget ${opts.widgetId} loading`);
    syncLoop(api, first.next_batch, state.abort.signal);
    await ready;
    setStatus(`widget ${opts.widgetId} ready`);
    return { url };
  };

  window.hangUp = async () => {
    await state.api.transport.send("im.vector.hangup", {});
    record("hung_up");
  };

  window.hostEvents = () => events.slice();

  window.stopCall = () => {
    if (!state) return;
    state.abort.abort();
    state.api?.stop();
    document.getElementById("call").src = "about:blank";
    state = null;
  };

  window.hostReady = true;
  setStatus("host ready");
})();
