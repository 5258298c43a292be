// The dev meet page: one tile per participant (this tab's camera first), audio played for the
// others. The token comes from the dev server's /token (dev-room, a guest identity per tab).
// window.meet.state() says what each tile shows, for tests and for the curious.
(() => {
  'use strict';
  const LK = window.LivekitClient;
  const tiles = document.getElementById('tiles');
  const status = document.getElementById('status');
  const leaveButton = document.getElementById('leave');
  const say = (text) => { status.textContent = text; };

  function tile(identity, local) {
    const id = `tile-${identity}`;
    let el = document.getElementById(id);
    if (!el) {
      el = document.createElement('div');
      el.id = id;
      el.className = 'tile';
      el.dataset.identity = identity;
      el.dataset.local = local ? 'true' : 'false';
      const label = document.createElement('span');
      label.textContent = local ? `${identity} (you)` : identity;
      el.appendChild(label);
      if (local) tiles.prepend(el); else tiles.appendChild(el);
    }
    return el;
  }

  function attach(track, identity, local) {
    if (track.kind === 'video') {
      const video = track.attach();
      video.muted = true;
      video.playsInline = true;
      const el = tile(identity, local);
      el.querySelectorAll('video').forEach((v) => v.remove());
      el.prepend(video);
    } else if (!local) {
      const audio = track.attach();
      audio.dataset.identity = identity;
      document.body.appendChild(audio);
    }
  }

  function state() {
    const room = window.meet.room;
    const publications = (identity) => {
      const p = room ? room.remoteParticipants.get(identity) : null;
      return p ? [...p.trackPublications.values()].map((pub) => `${pub.kind}:${pub.isSubscribed ? 'subscribed' : 'not subscribed'}`) : [];
    };
    return [...tiles.querySelectorAll('.tile')].map((el) => {
      const video = el.querySelector('video');
      const quality = video && video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
      return {
        identity: el.dataset.identity,
        local: el.dataset.local === 'true',
        videoWidth: video ? video.videoWidth : 0,
        videoHeight: video ? video.videoHeight : 0,
        framesDecoded: quality ? quality.totalVideoFrames : 0,
        tracks: el.dataset.local === 'true' ? [] : publications(el.dataset.identity),
      };
    });
  }

  async function start() {
    if (!LK) { say('livekit-client did not load'); return; }
    const name = new URLSearchParams(location.search).get('name') || '';
    const response = await fetch(`token?${new URLSearchParams({ name })}`);
    if (!response.ok) { say(`token: HTTP ${response.status}`); return; }
    const { url, token, identity, room: roomName } = await response.json();
    const room = new LK.Room({ adaptiveStream: true, dynacast: true });
    window.meet.room = room;
    room
      .on(LK.RoomEvent.TrackSubscribed, (track, _pub, participant) => attach(track, participant.identity, false))
      .on(LK.RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((el) => el.remove()))
      .on(LK.RoomEvent.LocalTrackPublished, (pub) => pub.track && attach(pub.track, identity, true))
      .on(LK.RoomEvent.ParticipantConnected, (p) => tile(p.identity, false))
      .on(LK.RoomEvent.ParticipantDisconnected, (p) => {
        const el = document.getElementById(`tile-${p.identity}`);
        if (el) el.remove();
      })
      .on(LK.RoomEvent.Disconnected, (reason) => say(`disconnected (${reason})`));
    say(`connecting to ${url} as ${identity}…`);
    await room.connect(url, token);
    for (const p of room.remoteParticipants.values()) tile(p.identity, false);
    await room.localParticipant.enableCameraAndMicrophone();
    say(`in ${roomName} as ${identity}; open this page in another tab to see yourself twice`);
    leaveButton.hidden = false;
    leaveButton.onclick = () => room.disconnect();
  }

  window.meet = { state, room: null, ready: start().catch((e) => say(`error: ${e && e.message ? e.message : e}`)) };
})();
