import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  GatewayClient, Op, Store, VoiceClient, isSpeaking, reduce, initialState, voiceMembers,
  type Dispatch, type Frame, type SocketLike, type State, type VoiceEnvironment, type VoiceOffer, type VoiceState,
} from "../src/index.ts";
import { BOB, GENERAL, ME, SERVER_ID, channel, readyServer } from "./fixtures.ts";

const VOICE = "20000000-0000-7000-8000-0000000000a1";
const LOUNGE = "20000000-0000-7000-8000-0000000000a2";

class FakeSocket implements SocketLike {
  readyState = 1;
  sent: Frame[] = [];
  onopen: SocketLike["onopen"] = null;
  onmessage: SocketLike["onmessage"] = null;
  onclose: SocketLike["onclose"] = null;
  onerror: SocketLike["onerror"] = null;
  send(data: string) {
    this.sent.push(JSON.parse(data) as Frame);
  }
  close() {
    this.readyState = 3;
  }
  push(frame: Frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code: number) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
}

/** A stand-in RTCPeerConnection: sections come from the offer's `a=mid:` lines. Unit tests only. */
class FakeTrack {
  enabled = true;
  stopped = false;
  constructor(readonly id: string) {}
  stop() {
    this.stopped = true;
  }
}

class FakeTransceiver {
  direction: RTCRtpTransceiverDirection = "recvonly";
  sender = { track: null as FakeTrack | null, replaceTrack: async (t: FakeTrack | null) => { this.sender.track = t; } };
  receiver: { track: FakeTrack };
  constructor(readonly mid: string) {
    this.receiver = { track: new FakeTrack(`remote-${mid}`) };
  }
}

class FakePeer {
  static all: FakePeer[] = [];
  transceivers: FakeTransceiver[] = [];
  remoteOffers: string[] = [];
  localDescription: { type: string; sdp: string } | null = null;
  closed = false;
  connectionState: RTCPeerConnectionState = "new";
  answers = 0;
  onicecandidate: ((e: { candidate: { candidate: string; toJSON(): unknown } | null }) => void) | null = null;
  ontrack: (() => void) | null = null;
  onconnectionstatechange: (() => void) | null = null;
  constructor(readonly config: RTCConfiguration) {
    FakePeer.all.push(this);
  }
  async setRemoteDescription(d: { type: string; sdp: string }) {
    if (d.type !== "offer") throw new Error("expected an offer");
    this.remoteOffers.push(d.sdp);
    for (const m of d.sdp.matchAll(/a=mid:(\S+)/g)) {
      if (!this.transceivers.some((t) => t.mid === m[1])) this.transceivers.push(new FakeTransceiver(m[1]));
    }
  }
  getTransceivers() {
    return this.transceivers;
  }
  async createAnswer() {
    this.answers += 1;
    return { type: "answer", sdp: `v=0 answer ${this.answers} mic=${this.transceivers[0]?.direction}` };
  }
  async setLocalDescription(d: { type: string; sdp: string }) {
    this.localDescription = d;
  }
  close() {
    this.closed = true;
  }
  /** What getStats() reports. */
  stats: Record<string, unknown>[] = [];
  async getStats() {
    return new Map(this.stats.map((s, i) => [`s${i}`, s]));
  }
  setState(s: RTCPeerConnectionState) {
    this.connectionState = s;
    this.onconnectionstatechange?.();
  }
  candidate(text: string | null) {
    this.onicecandidate?.({ candidate: text === null ? null : { candidate: text, toJSON: () => ({ candidate: text, sdpMid: "0", sdpMLineIndex: 0 }) } });
  }
}

let socket: FakeSocket;
let gateway: GatewayClient;
let store: Store;
let voice: VoiceClient;
let mics: FakeTrack[];
let denyMic: boolean;
const flush = () => vi.advanceTimersByTimeAsync(0);

function env(): VoiceEnvironment {
  return {
    createPeerConnection: (config) => new FakePeer(config) as unknown as RTCPeerConnection,
    getUserMedia: async () => {
      if (denyMic) throw Object.assign(new Error("denied"), { name: "NotAllowedError" });
      const track = new FakeTrack(`mic-${mics.length + 1}`);
      mics.push(track);
      return { getAudioTracks: () => [track], getTracks: () => [track] } as unknown as MediaStream;
    },
  };
}

function dispatch(t: string, d: unknown, s = 2) {
  socket.push({ op: Op.DISPATCH, t, d, s });
}

const sent = (op: number) => socket.sent.filter((f) => f.op === op).map((f) => f.d as Record<string, unknown>);
const peer = () => FakePeer.all[FakePeer.all.length - 1];

function sdp(mids: string[]) {
  return `v=0\r\n${mids.map((m) => `m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:${m}\r\n`).join("")}`;
}

function offer(extra: Partial<VoiceOffer> = {}): VoiceOffer {
  return {
    voice_session: "vs-1", negotiation: 1, channel_id: VOICE, sdp: sdp(["0", "1"]),
    tracks: [{ mid: "1", user_id: BOB.id, session_id: "bob-session" }],
    ice_servers: [{ urls: ["stun:stun.example.org:3478"] }, { urls: "turn:turn.example.org", username: "u", credential: "c" }],
    ...extra,
  };
}

beforeEach(async () => {
  vi.useFakeTimers();
  FakePeer.all = [];
  mics = [];
  denyMic = false;
  store = new Store();
  gateway = new GatewayClient({ url: "ws://node/gateway", token: async () => "tok", socket: () => (socket = new FakeSocket()), random: () => 0.5 });
  gateway.on("dispatch", (e) => store.apply(e));
  voice = new VoiceClient(gateway, store, env(), 15_000);
  gateway.connect();
  socket.push({ op: Op.HELLO, d: { heartbeat_interval: 45_000 } });
  await flush();
  const rs = readyServer();
  rs.channels.push(channel(VOICE, { name: "Lounge", kind: "voice" }), channel(LOUNGE, { name: "Quiet", kind: "voice" }));
  dispatch("READY", { v: 1, session_id: "s", user: ME, servers: [rs] }, 1);
});

afterEach(() => {
  gateway.disconnect();
  vi.useRealTimers();
});

describe("voice signaling", () => {
  it("joins with op 4, answers the offer with the microphone on mid 0, sendonly", async () => {
    await voice.join(SERVER_ID, VOICE);
    expect(sent(Op.VOICE_STATE_UPDATE)).toEqual([{ server_id: SERVER_ID, channel_id: VOICE, self_mute: false, self_deaf: false }]);
    expect(voice.getSnapshot().status).toBe("joining");

    dispatch("VOICE_OFFER", offer());
    await flush();
    const pc = peer();
    expect(pc.config.iceServers).toEqual([
      { urls: ["stun:stun.example.org:3478"] }, { urls: "turn:turn.example.org", username: "u", credential: "c" },
    ]);
    expect(pc.config.bundlePolicy).toBe("max-bundle");
    expect(pc.remoteOffers).toHaveLength(1);
    const mic = pc.transceivers.find((t) => t.mid === "0")!;
    expect(mic.sender.track).toBe(mics[0]);
    expect(mic.direction).toBe("sendonly");
    expect(sent(Op.VOICE_ANSWER)).toEqual([{ voice_session: "vs-1", negotiation: 1, sdp: "v=0 answer 1 mic=sendonly" }]);
    const snap = voice.getSnapshot();
    expect(snap.status).toBe("connecting");
    expect(snap.remote.map((r) => [r.mid, r.userId])).toEqual([["1", BOB.id]]);

    pc.setState("connected");
    expect(voice.getSnapshot().status).toBe("connected");
  });

  it("counts inbound packets per participant from getStats, by mid or by track", async () => {
    await voice.join(SERVER_ID, VOICE);
    const carol = "00000000-0000-8000-8000-00000000000c";
    dispatch("VOICE_OFFER", offer({
      sdp: sdp(["0", "1", "2"]),
      tracks: [{ mid: "1", user_id: BOB.id, session_id: "bob-session" }, { mid: "2", user_id: carol, session_id: "carol-session" }],
    }));
    await flush();
    peer().stats = [
      { type: "inbound-rtp", kind: "audio", mid: "1", packetsReceived: 40 },
      { type: "inbound-rtp", kind: "audio", trackIdentifier: "remote-2", packetsReceived: 7 },
      { type: "inbound-rtp", kind: "audio", mid: "9", packetsReceived: 3 },
      { type: "outbound-rtp", kind: "audio", packetsSent: 50 },
    ];
    expect(await voice.stats()).toEqual({ packetsSent: 50, packetsReceived: 50, receivedFrom: { [BOB.id]: 40, [carol]: 7 }, rttMs: null });
  });

  it("trickles its ICE candidates with op 13 and leaves out the end marker", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    peer().candidate("candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host");
    peer().candidate("");
    peer().candidate(null);
    expect(sent(Op.VOICE_ICE_CANDIDATE)).toEqual([
      { voice_session: "vs-1", candidate: { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", sdpMid: "0", sdpMLineIndex: 0 } },
    ]);
  });

  it("renegotiates later offers on the same connection and ignores stale ones", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    const carol = "00000000-0000-8000-8000-00000000000c";
    dispatch("VOICE_OFFER", offer({
      negotiation: 2, sdp: sdp(["0", "1", "2"]),
      tracks: [{ mid: "1", user_id: BOB.id }, { mid: "2", user_id: carol }],
    }), 3);
    await flush();
    expect(FakePeer.all).toHaveLength(1);
    expect(peer().remoteOffers).toHaveLength(2);
    expect(sent(Op.VOICE_ANSWER).map((a) => a.negotiation)).toEqual([1, 2]);
    expect(voice.getSnapshot().remote.map((r) => r.userId)).toEqual([BOB.id, carol]);

    // A repeated older offer changes nothing.
    dispatch("VOICE_OFFER", offer(), 4);
    await flush();
    expect(sent(Op.VOICE_ANSWER)).toHaveLength(2);

    // Bob leaves: his section turns inactive and is no longer in `tracks`.
    dispatch("VOICE_OFFER", offer({ negotiation: 3, sdp: sdp(["0", "1", "2"]), tracks: [{ mid: "2", user_id: carol }] }), 5);
    await flush();
    expect(voice.getSnapshot().remote.map((r) => [r.mid, r.userId])).toEqual([["2", carol]]);
    expect(voice.getSnapshot().negotiation).toBe(3);
  });

  it("answers a new voice session on a new connection and closes the old one", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    const first = peer();
    await voice.join(SERVER_ID, LOUNGE);
    expect(sent(Op.VOICE_STATE_UPDATE).map((d) => d.channel_id)).toEqual([VOICE, LOUNGE]);
    expect(first.closed).toBe(true);
    dispatch("VOICE_OFFER", offer({ voice_session: "vs-2", channel_id: LOUNGE, tracks: [] }), 3);
    await flush();
    expect(FakePeer.all).toHaveLength(2);
    expect(sent(Op.VOICE_ANSWER).map((a) => a.voice_session)).toEqual(["vs-1", "vs-2"]);
    expect(voice.getSnapshot()).toMatchObject({ channelId: LOUNGE, voiceSession: "vs-2", remote: [] });
  });

  it("tears down on VOICE_SESSION_END and says why", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    dispatch("VOICE_SESSION_END", { voice_session: "other", reason: "closed" }, 3);
    expect(voice.getSnapshot().status).toBe("connecting");
    dispatch("VOICE_SESSION_END", { voice_session: "vs-1", reason: "connect_timeout" }, 4);
    expect(peer().closed).toBe(true);
    expect(mics[0].stopped).toBe(true);
    expect(voice.getSnapshot()).toMatchObject({ status: "idle", channelId: null, ended: "Voice could not connect to the node in time." });
  });

  it("mutes and deafens: tells the node and stops sending", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    voice.setMute(true);
    expect(mics[0].enabled).toBe(false);
    voice.setDeaf(true);
    voice.setMute(false);
    expect(mics[0].enabled).toBe(false); // still deafened
    voice.setDeaf(false);
    expect(mics[0].enabled).toBe(true);
    expect(sent(Op.VOICE_STATE_UPDATE).slice(1).map((d) => [d.channel_id, d.self_mute, d.self_deaf])).toEqual([
      [VOICE, true, false], [VOICE, true, true], [VOICE, false, true], [VOICE, false, false],
    ]);
  });

  it("leaves with channel_id null and closes the connection", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    voice.leave();
    expect(sent(Op.VOICE_STATE_UPDATE).at(-1)).toEqual({ server_id: SERVER_ID, channel_id: null, self_mute: false, self_deaf: false });
    expect(peer().closed).toBe(true);
    expect(voice.getSnapshot().status).toBe("idle");
    // A late offer for the old session is ignored.
    dispatch("VOICE_OFFER", offer({ negotiation: 2 }), 3);
    await flush();
    expect(FakePeer.all).toHaveLength(1);
  });

  it("joins to listen when the microphone is refused", async () => {
    denyMic = true;
    await voice.join(SERVER_ID, VOICE);
    expect(voice.getSnapshot().error).toMatch(/listen but not speak: the browser was not allowed/);
    dispatch("VOICE_OFFER", offer());
    await flush();
    expect(peer().transceivers[0].sender.track).toBeNull();
    expect(sent(Op.VOICE_ANSWER)).toHaveLength(1);
  });

  it("says so when the node has no voice signaling (closes with 4001)", async () => {
    await voice.join(SERVER_ID, VOICE);
    socket.drop(4001);
    expect(voice.getSnapshot()).toMatchObject({ status: "idle", unsupported: true, error: "This node does not offer voice connections yet." });
  });

  it("shows the node's refusal of a join in its words", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_ERROR", { op: 4, code: "missing_permissions", message: "you may not connect to this voice channel", channel_id: VOICE });
    expect(voice.getSnapshot()).toMatchObject({ status: "idle", error: "you may not connect to this voice channel" });
    expect(mics[0].stopped).toBe(true);
  });

  it("gives up with an explanation when no offer comes", async () => {
    await voice.join(SERVER_ID, VOICE);
    await vi.advanceTimersByTimeAsync(15_001);
    expect(voice.getSnapshot().status).toBe("idle");
    expect(voice.getSnapshot().error).toMatch(/did not connect you/);
    expect(sent(Op.VOICE_STATE_UPDATE).at(-1)?.channel_id).toBeNull();
  });

  it("asks for an ICE restart once when the connection fails", async () => {
    await voice.join(SERVER_ID, VOICE);
    dispatch("VOICE_OFFER", offer());
    await flush();
    peer().setState("failed");
    peer().setState("failed");
    expect(sent(Op.VOICE_RESTART)).toEqual([{ voice_session: "vs-1" }]);
    expect(voice.getSnapshot().status).toBe("reconnecting");
  });

  it("refuses to join while the gateway is not connected", async () => {
    gateway.disconnect();
    await voice.join(SERVER_ID, VOICE);
    expect(voice.getSnapshot()).toMatchObject({ status: "idle", error: "Not connected to the node; try again in a moment." });
  });
});

describe("voice state in the store", () => {
  const vs = (user: string, channelId: string, extra: Partial<VoiceState> = {}): VoiceState => ({
    user_id: user, server_id: SERVER_ID, channel_id: channelId, self_mute: false, self_deaf: false, server_mute: false,
    server_deaf: false, joined_at: "2026-01-01T00:00:00Z", ...extra,
  });
  const ev = (e: Dispatch) => (s: State) => reduce(s, { type: "dispatch", event: e });

  function ready(states: VoiceState[]): State {
    const rs = readyServer();
    rs.channels.push(channel(VOICE, { name: "Lounge", kind: "voice" }), channel(LOUNGE, { name: "Quiet", kind: "voice" }));
    rs.voice_states = states;
    return ev({ t: "READY", d: { v: 1, session_id: "s", user: ME, servers: [rs] } })(initialState);
  }

  it("takes voice states from READY and follows joins, moves and leaves", () => {
    let s = ready([vs(BOB.id, VOICE)]);
    expect(voiceMembers(s, VOICE).map((v) => v.user_id)).toEqual([BOB.id]);
    s = ev({ t: "VOICE_STATE_UPDATE", d: vs(ME.id, VOICE, { joined_at: "2026-01-01T00:01:00Z" }) })(s);
    expect(voiceMembers(s, VOICE).map((v) => v.user_id)).toEqual([BOB.id, ME.id]);
    s = ev({ t: "VOICE_STATE_UPDATE", d: vs(BOB.id, LOUNGE) })(s);
    expect(voiceMembers(s, VOICE).map((v) => v.user_id)).toEqual([ME.id]);
    expect(voiceMembers(s, LOUNGE).map((v) => v.user_id)).toEqual([BOB.id]);
    s = ev({ t: "VOICE_STATE_UPDATE", d: { user_id: BOB.id, server_id: SERVER_ID, channel_id: null } })(s);
    expect(voiceMembers(s, LOUNGE)).toEqual([]);
  });

  it("shows who speaks, and stops on mute and on leave", () => {
    let s = ready([vs(BOB.id, VOICE)]);
    s = ev({ t: "VOICE_SPEAKING", d: { channel_id: VOICE, user_id: BOB.id, speaking: true } })(s);
    expect(isSpeaking(s, BOB.id, VOICE)).toBe(true);
    s = ev({ t: "VOICE_STATE_UPDATE", d: vs(BOB.id, VOICE, { self_mute: true }) })(s);
    expect(isSpeaking(s, BOB.id, VOICE)).toBe(false);
    s = ev({ t: "VOICE_SPEAKING", d: { channel_id: VOICE, user_id: BOB.id, speaking: true } })(s);
    s = ev({ t: "VOICE_SPEAKING", d: { channel_id: VOICE, user_id: BOB.id, speaking: false } })(s);
    expect(isSpeaking(s, BOB.id, VOICE)).toBe(false);
    s = ev({ t: "VOICE_SPEAKING", d: { channel_id: VOICE, user_id: BOB.id, speaking: true } })(s);
    s = ev({ t: "VOICE_STATE_UPDATE", d: { user_id: BOB.id, server_id: SERVER_ID, channel_id: null } })(s);
    expect(s.speaking).toEqual({});
  });

  it("forgets voice states of a deleted channel or a server left", () => {
    let s = ready([vs(BOB.id, VOICE), vs(ME.id, LOUNGE)]);
    s = ev({ t: "CHANNEL_DELETE", d: { id: VOICE, server_id: SERVER_ID } })(s);
    expect(Object.keys(s.voiceStates)).toEqual([ME.id]);
    s = ev({ t: "SERVER_DELETE", d: { id: SERVER_ID } })(s);
    expect(s.voiceStates).toEqual({});
    expect(GENERAL in s.channels).toBe(false);
  });
});
