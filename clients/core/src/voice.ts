/**
 * The voice client (spec/voice.md): joins, leaves, mutes and deafens with
 * op 4 VOICE_STATE_UPDATE; answers the node's VOICE_OFFERs on one
 * `RTCPeerConnection` per voice session (microphone on mid `0`, sendonly;
 * every other section one participant's voice, named by the offer's
 * `tracks`), trickles its ICE candidates (op 13), renegotiates on later
 * offers, and tears down on VOICE_SESSION_END or leave. Who is in which
 * channel and who speaks live in the store (VOICE_STATE_UPDATE,
 * VOICE_SPEAKING); this module holds the connection of this device.
 *
 * The browser APIs come in through {@link VoiceEnvironment}, so the
 * negotiation logic runs in unit tests with a stand-in peer connection.
 */
import { Op, type GatewayClient } from "./gateway.ts";
import type { Store } from "./store.ts";
import type { Dispatch, IceServer, VoiceOffer, VoiceTrack } from "./types.ts";

/** What the voice client needs from the browser. */
export interface VoiceEnvironment {
  createPeerConnection(config: RTCConfiguration): RTCPeerConnection;
  getUserMedia(constraints: MediaStreamConstraints): Promise<MediaStream>;
}

export type VoiceStatus = "idle" | "joining" | "connecting" | "connected" | "reconnecting";

/** One other participant's voice, ready to play. */
export interface RemoteVoice {
  mid: string;
  userId: string;
  track: MediaStreamTrack;
}

export interface VoiceSnapshot {
  status: VoiceStatus;
  serverId: string | null;
  channelId: string | null;
  selfMute: boolean;
  selfDeaf: boolean;
  voiceSession: string | null;
  /** The last offer answered in this voice session. */
  negotiation: number;
  remote: RemoteVoice[];
  /** The microphone in use (`deviceId`), or null for the default. */
  inputDeviceId: string | null;
  /** False when joined without a microphone (listening only). */
  hasMicrophone: boolean;
  /** What went wrong, in words; cleared by the next join. */
  error: string | null;
  /** Why the last voice session ended, in words, when the node ended it. */
  ended: string | null;
  /** The node answered op 4 by closing the gateway: it has no voice signaling. */
  unsupported: boolean;
}

/** Counters of the voice connection (`getStats`), for a connection-info display. */
export interface VoiceStats {
  packetsSent: number;
  packetsReceived: number;
  /** Packets received from each other participant (user id → inbound-rtp `packetsReceived` of their section). */
  receivedFrom: Record<string, number>;
  /** Round-trip time to the node in ms, when measured. */
  rttMs: number | null;
}

export const VOICE_END_REASONS: Record<string, string> = {
  connect_timeout: "Voice could not connect to the node in time.",
  answer_timeout: "Voice stopped: the connection did not answer the node in time.",
  connection_failed: "Voice disconnected: the connection to the node was lost.",
  closed: "Voice ended.",
  left: "You left voice.",
  replaced: "You joined voice on another device.",
  disconnected: "A moderator disconnected you from voice.",
  access_lost: "You can no longer connect to that voice channel.",
  gateway_closed: "Voice ended because the connection to the node closed.",
};

/** How long to wait for the node's first offer after asking to join. */
export const JOIN_TIMEOUT_MS = 15_000;

const idle: VoiceSnapshot = {
  status: "idle", serverId: null, channelId: null, selfMute: false, selfDeaf: false, voiceSession: null, negotiation: 0,
  remote: [], inputDeviceId: null, hasMicrophone: false, error: null, ended: null, unsupported: false,
};

export function browserVoiceEnvironment(): VoiceEnvironment {
  return {
    createPeerConnection: (config) => new RTCPeerConnection(config),
    getUserMedia: (constraints) => {
      if (!globalThis.navigator?.mediaDevices?.getUserMedia) {
        return Promise.reject(new Error("this browser gives no access to microphones here (voice needs https or localhost)"));
      }
      return navigator.mediaDevices.getUserMedia(constraints);
    },
  };
}

function iceServers(list: IceServer[] | undefined): RTCIceServer[] {
  return (list ?? []).map((s) => {
    const server: RTCIceServer = { urls: s.urls };
    if (s.username != null) server.username = s.username;
    if (s.credential != null) server.credential = s.credential;
    return server;
  });
}

function describeMediaError(err: unknown): string {
  const name = err instanceof Error ? err.name : "";
  if (name === "NotAllowedError") return "the browser was not allowed to use the microphone";
  if (name === "NotFoundError" || name === "OverconstrainedError") return "no microphone was found";
  if (name === "NotReadableError") return "the microphone is busy in another program";
  return err instanceof Error ? err.message : String(err);
}

export class VoiceClient {
  private snap: VoiceSnapshot = idle;
  private listeners = new Set<() => void>();
  private pc: RTCPeerConnection | null = null;
  private mic: MediaStream | null = null;
  private tracks = new Map<string, VoiceTrack>();
  /** Offers are applied one at a time, in arrival order. */
  private queue: Promise<void> = Promise.resolve();
  private joinTimer: ReturnType<typeof setTimeout> | null = null;
  private restarted = false;
  /** Bumped on every teardown, so late async work of an old session stops. */
  private generation = 0;
  private env: VoiceEnvironment | null;

  constructor(
    private readonly gateway: GatewayClient,
    private readonly store: Store,
    env?: VoiceEnvironment,
    private readonly joinTimeoutMs = JOIN_TIMEOUT_MS,
  ) {
    this.env = env ?? null;
    gateway.on("dispatch", (event) => this.onDispatch(event));
    gateway.on("close", (code) => {
      // 4001 unknown opcode / 4002 decode error right after asking to join: this node has no voice signaling.
      if (this.snap.status === "joining" && (code === 4001 || code === 4002)) {
        this.teardown();
        this.set({ ...idle, unsupported: true, error: "This node does not offer voice connections yet." });
      }
    });
  }

  getSnapshot = (): VoiceSnapshot => this.snap;

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /** The peer connection of the current voice session (for diagnostics). */
  get peerConnection(): RTCPeerConnection | null {
    return this.pc;
  }

  private environment(): VoiceEnvironment {
    this.env ??= browserVoiceEnvironment();
    return this.env;
  }

  private set(next: VoiceSnapshot): void {
    this.snap = next;
    for (const l of this.listeners) l();
  }

  private patch(p: Partial<VoiceSnapshot>): void {
    this.set({ ...this.snap, ...p });
  }

  private sendState(serverId: string, channelId: string | null): boolean {
    return this.gateway.sendOp(Op.VOICE_STATE_UPDATE, {
      server_id: serverId, channel_id: channelId, self_mute: this.snap.selfMute, self_deaf: this.snap.selfDeaf,
    });
  }

  /** Joins (or moves to) a voice channel. Asks for the microphone first; without one the user can still listen. */
  async join(serverId: string, channelId: string): Promise<void> {
    if (this.snap.channelId === channelId && this.snap.status !== "idle") return;
    const generation = ++this.generation;
    this.closePeer();
    this.set({ ...this.snap, status: "joining", serverId, channelId, error: null, ended: null, remote: [], voiceSession: null, negotiation: 0 });
    let micError: string | null = null;
    if (!this.mic) {
      try {
        this.mic = await this.openMicrophone(this.snap.inputDeviceId);
      } catch (err) {
        micError = `You can listen but not speak: ${describeMediaError(err)}.`;
      }
    }
    if (generation !== this.generation) return;
    this.applyMicEnabled();
    this.patch({ hasMicrophone: !!this.mic, error: micError });
    if (!this.sendState(serverId, channelId)) {
      this.teardown();
      this.patchIdle("Not connected to the node; try again in a moment.");
      return;
    }
    this.clearJoinTimer();
    this.joinTimer = setTimeout(() => {
      if (this.snap.status !== "joining" || generation !== this.generation) return;
      this.sendState(serverId, null);
      this.teardown();
      this.patchIdle("The node did not connect you to this voice channel. You may lack the permission to connect, or it is full.");
    }, this.joinTimeoutMs);
  }

  /** Leaves voice. */
  leave(): void {
    if (this.snap.serverId && this.snap.status !== "idle") this.sendState(this.snap.serverId, null);
    this.teardown();
    this.patchIdle(null);
  }

  setMute(mute: boolean): void {
    this.patch({ selfMute: mute });
    this.applyMicEnabled();
    this.pushState();
  }

  setDeaf(deaf: boolean): void {
    this.patch({ selfDeaf: deaf });
    this.applyMicEnabled();
    this.pushState();
  }

  /** Switches the microphone, live if connected. `null` is the system default. */
  async setInputDevice(deviceId: string | null): Promise<void> {
    this.patch({ inputDeviceId: deviceId });
    if (this.snap.status === "idle") return;
    let next: MediaStream;
    try {
      next = await this.openMicrophone(deviceId);
    } catch (err) {
      this.patch({ error: `Cannot use that microphone: ${describeMediaError(err)}.` });
      return;
    }
    const old = this.mic;
    this.mic = next;
    this.applyMicEnabled();
    const sender = this.micTransceiver()?.sender;
    if (sender) await sender.replaceTrack(next.getAudioTracks()[0] ?? null);
    old?.getTracks().forEach((t) => t.stop());
    this.patch({ hasMicrophone: true, error: null });
  }

  /** Packet counters and round-trip time of the voice connection. */
  async stats(): Promise<VoiceStats | null> {
    const pc = this.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    const out: VoiceStats = { packetsSent: 0, packetsReceived: 0, receivedFrom: {}, rttMs: null };
    // Whose section an inbound stream is: by its `mid`, or by its receiver's track where a browser gives no mid.
    const byMid = new Map<string, string>();
    const byTrack = new Map<string, string>();
    for (const t of pc.getTransceivers()) {
      const who = t.mid ? this.tracks.get(t.mid) : undefined;
      if (!t.mid || t.mid === "0" || !who) continue;
      byMid.set(t.mid, who.user_id);
      if (t.receiver.track) byTrack.set(t.receiver.track.id, who.user_id);
    }
    report.forEach((s: { type: string; kind?: string; mid?: string; trackIdentifier?: string; packetsReceived?: number; packetsSent?: number; currentRoundTripTime?: number; state?: string; nominated?: boolean }) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.packetsReceived += s.packetsReceived ?? 0;
        const who = (s.mid != null ? byMid.get(s.mid) : undefined) ?? (s.trackIdentifier != null ? byTrack.get(s.trackIdentifier) : undefined);
        if (who) out.receivedFrom[who] = (out.receivedFrom[who] ?? 0) + (s.packetsReceived ?? 0);
      }
      if (s.type === "outbound-rtp" && s.kind === "audio") out.packetsSent += s.packetsSent ?? 0;
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated && typeof s.currentRoundTripTime === "number") {
        out.rttMs = Math.round(s.currentRoundTripTime * 1000);
      }
    });
    return out;
  }

  // ---- gateway events ----

  private onDispatch(event: Dispatch): void {
    switch (event.t) {
      case "VOICE_OFFER": {
        const offer = event.d;
        this.queue = this.queue.then(() => this.applyOffer(offer)).catch(() => undefined);
        break;
      }
      case "VOICE_ERROR": {
        // The node refused a voice op: a join (op 4) that cannot happen ends the attempt.
        const { op, message, voice_session } = event.d;
        if (op === Op.VOICE_STATE_UPDATE && this.snap.status === "joining") {
          this.teardown();
          this.patchIdle(message);
        } else if (!voice_session || voice_session === this.snap.voiceSession) {
          this.patch({ error: message });
        }
        break;
      }
      case "VOICE_SESSION_END":
        if (event.d.voice_session === this.snap.voiceSession) {
          this.teardown();
          this.patchIdle(null, VOICE_END_REASONS[event.d.reason] ?? `Voice ended (${event.d.reason}).`);
        }
        break;
      case "VOICE_STATE_UPDATE": {
        const me = this.store.getState().me;
        const v = event.d;
        if (!me || v.user_id !== me.id || this.snap.status === "idle" || this.snap.status === "joining") break;
        if (v.channel_id === null) {
          // Left from another device, or disconnected by a moderator.
          this.teardown();
          this.patchIdle(null, "You left voice (from another device, or a moderator disconnected you).");
        } else if (v.channel_id !== this.snap.channelId) {
          // Moved by a moderator: a new offer for the new channel follows.
          this.patch({ channelId: v.channel_id, serverId: v.server_id });
        }
        break;
      }
      case "READY": {
        // A fresh gateway session: the old one's voice session ends with it. Join again where we were.
        const { serverId, channelId, status } = this.snap;
        if (status !== "idle" && serverId && channelId) {
          this.closePeer();
          this.set({ ...this.snap, status: "idle", channelId: null });
          void this.join(serverId, channelId);
        }
        break;
      }
      default:
        break;
    }
  }

  private async applyOffer(offer: VoiceOffer): Promise<void> {
    if (this.snap.status === "idle") return;
    const generation = this.generation;
    const newSession = offer.voice_session !== this.snap.voiceSession;
    if (!newSession && offer.negotiation <= this.snap.negotiation) return; // stale or repeated
    this.clearJoinTimer();
    if (newSession) {
      this.closePeer();
      this.pc = this.createPeer(offer);
      this.restarted = false;
      this.patch({ voiceSession: offer.voice_session, negotiation: 0, status: "connecting", channelId: offer.channel_id, remote: [] });
    }
    const pc = this.pc;
    if (!pc) return;
    this.tracks = new Map(offer.tracks.map((t) => [t.mid, t]));
    try {
      await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
      const mic = this.micTransceiver();
      if (mic) {
        const track = this.mic?.getAudioTracks()[0] ?? null;
        if (mic.sender.track !== track) await mic.sender.replaceTrack(track);
        mic.direction = "sendonly";
      }
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      if (generation !== this.generation || pc !== this.pc) return;
      const sdp = pc.localDescription?.sdp ?? answer.sdp ?? "";
      this.gateway.sendOp(Op.VOICE_ANSWER, { voice_session: offer.voice_session, negotiation: offer.negotiation, sdp });
      this.patch({ negotiation: offer.negotiation, remote: this.remoteVoices() });
    } catch (err) {
      if (generation !== this.generation) return;
      const message = err instanceof Error ? err.message : String(err);
      this.sendState(this.snap.serverId ?? "", null);
      this.teardown();
      this.patchIdle(`Voice could not be set up: ${message}`);
    }
  }

  private createPeer(offer: VoiceOffer): RTCPeerConnection {
    const pc = this.environment().createPeerConnection({
      iceServers: iceServers(offer.ice_servers),
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
    });
    const session = offer.voice_session;
    pc.onicecandidate = (e) => {
      // The end-of-candidates marker may be omitted (spec/voice.md).
      if (!e.candidate || !e.candidate.candidate || pc !== this.pc) return;
      this.gateway.sendOp(Op.VOICE_ICE_CANDIDATE, { voice_session: session, candidate: e.candidate.toJSON() });
    };
    pc.ontrack = () => {
      if (pc === this.pc) this.patch({ remote: this.remoteVoices() });
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      const s = pc.connectionState;
      if (s === "connected") {
        this.restarted = false;
        this.patch({ status: "connected" });
      } else if (s === "disconnected") {
        this.patch({ status: "reconnecting" });
      } else if (s === "failed" && !this.restarted) {
        // Ask once for an ICE restart (the network may have changed); the node answers with a new offer.
        this.restarted = true;
        this.patch({ status: "reconnecting" });
        this.gateway.sendOp(Op.VOICE_RESTART, { voice_session: session });
      }
    };
    return pc;
  }

  private micTransceiver(): RTCRtpTransceiver | undefined {
    return this.pc?.getTransceivers().find((t) => t.mid === "0");
  }

  /** The sections that carry someone now, by the offer's `tracks` (never by msid). */
  private remoteVoices(): RemoteVoice[] {
    const pc = this.pc;
    if (!pc) return [];
    const out: RemoteVoice[] = [];
    for (const t of pc.getTransceivers()) {
      if (!t.mid || t.mid === "0") continue;
      const who = this.tracks.get(t.mid);
      if (!who || !t.receiver.track) continue;
      out.push({ mid: t.mid, userId: who.user_id, track: t.receiver.track });
    }
    return out;
  }

  private async openMicrophone(deviceId: string | null): Promise<MediaStream> {
    return this.environment().getUserMedia({
      audio: {
        ...(deviceId ? { deviceId: { exact: deviceId } } : {}),
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
      },
      video: false,
    });
  }

  /** Muted or deafened: stop sending (the node also drops it, spec/voice.md). */
  private applyMicEnabled(): void {
    const enabled = !this.snap.selfMute && !this.snap.selfDeaf;
    for (const t of this.mic?.getAudioTracks() ?? []) t.enabled = enabled;
  }

  private pushState(): void {
    const { serverId, channelId, status } = this.snap;
    if (serverId && channelId && status !== "idle") this.sendState(serverId, channelId);
  }

  private clearJoinTimer(): void {
    if (this.joinTimer) clearTimeout(this.joinTimer);
    this.joinTimer = null;
  }

  private closePeer(): void {
    const pc = this.pc;
    this.pc = null;
    this.tracks = new Map();
    if (pc) {
      pc.onicecandidate = null;
      pc.ontrack = null;
      pc.onconnectionstatechange = null;
      pc.close();
    }
  }

  private teardown(): void {
    this.generation += 1;
    this.clearJoinTimer();
    this.closePeer();
    this.mic?.getTracks().forEach((t) => t.stop());
    this.mic = null;
  }

  private patchIdle(error: string | null, ended: string | null = null): void {
    this.set({
      ...idle,
      selfMute: this.snap.selfMute,
      selfDeaf: this.snap.selfDeaf,
      inputDeviceId: this.snap.inputDeviceId,
      unsupported: this.snap.unsupported,
      error,
      ended,
    });
  }
}
