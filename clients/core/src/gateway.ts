/**
 * The gateway client (spec/gateway.md): HELLO → IDENTIFY (token in the
 * frame), heartbeats carrying the last sequence number, RESUME after a
 * dropped connection with exponential backoff and jitter, a fresh IDENTIFY
 * after INVALID_SESSION, and close codes handled as the spec's table says.
 */
import type { Dispatch, Presence, Status } from "./types.ts";

export const Op = {
  DISPATCH: 0,
  HEARTBEAT: 1,
  IDENTIFY: 2,
  PRESENCE_UPDATE: 3,
  VOICE_STATE_UPDATE: 4,
  RESUME: 6,
  RECONNECT: 7,
  INVALID_SESSION: 9,
  HELLO: 10,
  HEARTBEAT_ACK: 11,
  VOICE_ANSWER: 12,
  VOICE_ICE_CANDIDATE: 13,
  VOICE_RESTART: 14,
} as const;

/** Close codes after which the session may be resumed. */
export const RESUMABLE_CLOSE_CODES = new Set([4000, 4009, 4010, 4013]);
/** Close codes after which reconnecting is pointless until the user signs in again. */
export const FATAL_CLOSE_CODES = new Set([4004, 4012]);

export interface Frame {
  op: number;
  d?: unknown;
  s?: number | null;
  t?: string | null;
}

/** The part of the WebSocket API the client uses (a fake one in tests). */
export interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type SocketFactory = (url: string) => SocketLike;

export type GatewayStatus = "idle" | "connecting" | "identifying" | "ready" | "reconnecting" | "closed";

export interface GatewayOptions {
  /** `ws(s)://host/gateway`. */
  url: string;
  /** A valid access token for IDENTIFY and RESUME (refreshed by the caller when needed). */
  token: () => Promise<string>;
  socket?: SocketFactory;
  /** Presence sent with IDENTIFY. */
  presence?: { status: Status; custom_status?: string | null };
  /** Backoff: first delay, cap (ms). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  random?: () => number;
}

export interface GatewayEvents {
  dispatch: (event: Dispatch, seq: number) => void;
  status: (status: GatewayStatus) => void;
  /** The session ended for good (signed out, token refused); sign in again. */
  fatal: (code: number, reason: string) => void;
  /** The server closed the connection (any code); reconnecting follows unless fatal. */
  close: (code: number, reason: string) => void;
}

type Handlers = { [K in keyof GatewayEvents]: Set<GatewayEvents[K]> };

/** Client close code used when we drop a connection ourselves to resume. */
const CLIENT_RECONNECT = 4900;

export class GatewayClient {
  private ws: SocketLike | null = null;
  private seq: number | null = null;
  private sessionId: string | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private awaitingAck = false;
  private attempts = 0;
  private stopped = true;
  private _status: GatewayStatus = "idle";
  private handlers: Handlers = { dispatch: new Set(), status: new Set(), fatal: new Set(), close: new Set() };
  private readonly opts: Required<Omit<GatewayOptions, "presence">> & Pick<GatewayOptions, "presence">;

  constructor(options: GatewayOptions) {
    this.opts = {
      ...options,
      socket: options.socket ?? ((url) => new WebSocket(url) as unknown as SocketLike),
      backoffBaseMs: options.backoffBaseMs ?? 1000,
      backoffMaxMs: options.backoffMaxMs ?? 30_000,
      random: options.random ?? Math.random,
    };
  }

  get status(): GatewayStatus {
    return this._status;
  }

  /** The session id from READY and the last sequence seen (what RESUME sends). */
  get session(): { sessionId: string | null; seq: number | null } {
    return { sessionId: this.sessionId, seq: this.seq };
  }

  on<K extends keyof GatewayEvents>(event: K, handler: GatewayEvents[K]): () => void {
    (this.handlers[event] as Set<GatewayEvents[K]>).add(handler);
    return () => (this.handlers[event] as Set<GatewayEvents[K]>).delete(handler);
  }

  connect(): void {
    this.stopped = false;
    this.open();
  }

  /** Closes for good (sign-out, page leaving). */
  disconnect(): void {
    this.stopped = true;
    this.clearTimers();
    this.sessionId = null;
    this.seq = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      ws.close(1000, "client closed");
    }
    this.setStatus("closed");
  }

  /** Sets the user's status (op 3). */
  updatePresence(presence: { status: Presence["status"]; custom_status?: string | null }): void {
    this.send({ op: Op.PRESENCE_UPDATE, d: presence });
  }

  /**
   * Sends a client op (voice signaling: 4, 12, 13, 14). Returns false when
   * no session is ready to carry it (the caller says so to the user).
   */
  sendOp(op: number, d: unknown): boolean {
    if (this._status !== "ready" || !this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify({ op, d }));
    return true;
  }

  private open(): void {
    this.clearTimers();
    this.setStatus(this.sessionId ? "reconnecting" : "connecting");
    const ws = this.opts.socket(this.opts.url);
    this.ws = ws;
    ws.onmessage = (ev) => this.onFrame(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  private onFrame(ws: SocketLike, data: unknown): void {
    if (ws !== this.ws) return;
    let frame: Frame;
    try {
      frame = JSON.parse(String(data)) as Frame;
    } catch {
      return;
    }
    switch (frame.op) {
      case Op.HELLO:
        this.onHello((frame.d as { heartbeat_interval: number }).heartbeat_interval);
        break;
      case Op.HEARTBEAT:
        this.sendHeartbeat();
        break;
      case Op.HEARTBEAT_ACK:
        this.awaitingAck = false;
        break;
      case Op.DISPATCH:
        this.onDispatch(frame);
        break;
      case Op.RECONNECT:
        this.dropAndReconnect(true);
        break;
      case Op.INVALID_SESSION:
        if (frame.d !== true) {
          this.sessionId = null;
          this.seq = null;
        }
        // Identify (or resume) again after a short random pause, as the spec allows.
        this.dropAndReconnect(frame.d === true, 1000 + this.opts.random() * 4000);
        break;
      default:
        break;
    }
  }

  private onHello(interval: number): void {
    this.awaitingAck = false;
    // First beat after a random part of the interval, so clients do not beat in step.
    this.scheduleHeartbeat(interval, interval * this.opts.random());
    this.setStatus("identifying");
    void this.authenticate();
  }

  private async authenticate(): Promise<void> {
    const ws = this.ws;
    let token: string;
    try {
      token = await this.opts.token();
    } catch {
      // Cannot get a token (signed out or the node is unreachable): retry later unless it is gone for good.
      if (ws === this.ws) this.dropAndReconnect(!!this.sessionId);
      return;
    }
    if (ws !== this.ws) return;
    if (this.sessionId && this.seq !== null) {
      this.send({ op: Op.RESUME, d: { token, session_id: this.sessionId, seq: this.seq } });
    } else {
      const d: Record<string, unknown> = { token };
      if (this.opts.presence) d.presence = this.opts.presence;
      this.send({ op: Op.IDENTIFY, d });
    }
  }

  private onDispatch(frame: Frame): void {
    if (typeof frame.s === "number") this.seq = frame.s;
    const event = { t: frame.t, d: frame.d } as Dispatch;
    if (event.t === "READY") {
      this.sessionId = event.d.session_id;
      this.attempts = 0;
      this.setStatus("ready");
    } else if (event.t === "RESUMED") {
      this.attempts = 0;
      this.setStatus("ready");
    }
    for (const h of this.handlers.dispatch) h(event, this.seq ?? 0);
  }

  private scheduleHeartbeat(interval: number, first: number): void {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    const beat = () => {
      if (this.awaitingAck) {
        // The last beat went unanswered: the connection is a zombie. Resume on a new one.
        this.dropAndReconnect(true);
        return;
      }
      this.sendHeartbeat();
      this.heartbeatTimer = setTimeout(beat, interval);
    };
    this.heartbeatTimer = setTimeout(beat, first);
  }

  private sendHeartbeat(): void {
    this.awaitingAck = true;
    this.send({ op: Op.HEARTBEAT, d: this.seq });
  }

  private send(frame: Frame): void {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  private onClose(ws: SocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = null;
    this.clearTimers();
    if (this.stopped) return;
    for (const h of this.handlers.close) h(code, reason);
    if (FATAL_CLOSE_CODES.has(code)) {
      this.stopped = true;
      this.sessionId = null;
      this.seq = null;
      this.setStatus("closed");
      for (const h of this.handlers.fatal) h(code, reason);
      return;
    }
    // 4001–4011 other than the resumable ones: the session is gone; identify afresh.
    const resumable = code < 4000 || RESUMABLE_CLOSE_CODES.has(code) || code === CLIENT_RECONNECT;
    if (!resumable) {
      this.sessionId = null;
      this.seq = null;
    }
    this.scheduleReconnect();
  }

  /** Closes the current socket ourselves and reconnects (resuming when `resume`). */
  private dropAndReconnect(resume: boolean, delayMs?: number): void {
    if (!resume) {
      this.sessionId = null;
      this.seq = null;
    }
    const ws = this.ws;
    this.ws = null;
    this.clearTimers();
    if (ws) {
      detach(ws);
      ws.close(CLIENT_RECONNECT, "reconnecting");
    }
    if (!this.stopped) this.scheduleReconnect(delayMs);
  }

  /** Exponential backoff with full jitter: random in [0, min(cap, base·2^n)]. */
  backoffDelay(attempt: number): number {
    const ceiling = Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** attempt);
    return Math.round(this.opts.random() * ceiling);
  }

  private scheduleReconnect(delayMs?: number): void {
    const delay = delayMs ?? this.backoffDelay(this.attempts);
    this.attempts += 1;
    this.setStatus("reconnecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.open();
    }, delay);
  }

  private clearTimers(): void {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.heartbeatTimer = null;
    this.reconnectTimer = null;
  }

  private setStatus(status: GatewayStatus): void {
    if (status === this._status) return;
    this._status = status;
    for (const h of this.handlers.status) h(status);
  }
}

function detach(ws: SocketLike): void {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
  ws.onopen = null;
}

/** `ws(s)://…/gateway` for a node's http(s) origin. */
export function gatewayUrl(baseUrl: string): string {
  const origin = baseUrl || globalThis.location?.origin || "";
  return origin.replace(/^http/, "ws").replace(/\/+$/, "") + "/gateway";
}
