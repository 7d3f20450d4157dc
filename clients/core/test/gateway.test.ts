import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { GatewayClient, Op, type Frame, type SocketLike } from "../src/index.ts";
import { ME } from "./fixtures.ts";

/** A WebSocket stand-in: records what the client sends, lets the test play the server. */
class FakeSocket implements SocketLike {
  readyState = 1;
  sent: Frame[] = [];
  closed: { code?: number; reason?: string } | null = null;
  onopen: SocketLike["onopen"] = null;
  onmessage: SocketLike["onmessage"] = null;
  onclose: SocketLike["onclose"] = null;
  onerror: SocketLike["onerror"] = null;

  send(data: string) {
    this.sent.push(JSON.parse(data) as Frame);
  }
  close(code?: number, reason?: string) {
    this.closed = { code, reason };
    this.readyState = 3;
  }
  /** The server sends a frame. */
  push(frame: Frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  /** The server (or network) closes the connection. */
  drop(code: number, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  ops() {
    return this.sent.map((f) => f.op);
  }
}

let sockets: FakeSocket[];
let client: GatewayClient;
const flush = () => vi.advanceTimersByTimeAsync(0);

function makeClient(random = () => 0.5) {
  sockets = [];
  client = new GatewayClient({
    url: "ws://node/gateway",
    token: async () => "tok",
    socket: () => {
      const s = new FakeSocket();
      sockets.push(s);
      return s;
    },
    random,
  });
  return client;
}

const last = () => sockets[sockets.length - 1];
const ready = (s: FakeSocket, seq = 1) =>
  s.push({ op: Op.DISPATCH, s: seq, t: "READY", d: { v: 1, session_id: "sess-1", user: ME, servers: [] } });
const dispatch = (s: FakeSocket, seq: number) =>
  s.push({ op: Op.DISPATCH, s: seq, t: "PRESENCE_UPDATE", d: { user_id: ME.id, status: "online", custom_status: null } });

beforeEach(() => vi.useFakeTimers());
afterEach(() => {
  client.disconnect();
  vi.useRealTimers();
});

describe("gateway session", () => {
  it("identifies after HELLO with the token in the frame, then heartbeats with the last seq", async () => {
    makeClient().connect();
    const s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 1000 } });
    await flush();
    expect(s.sent[0]).toEqual({ op: Op.IDENTIFY, d: { token: "tok" } });
    ready(s);
    dispatch(s, 2);
    expect(client.status).toBe("ready");
    // First beat after interval × jitter (0.5 here), carrying the last seq.
    await vi.advanceTimersByTimeAsync(500);
    expect(s.sent[1]).toEqual({ op: Op.HEARTBEAT, d: 2 });
    s.push({ op: Op.HEARTBEAT_ACK });
    await vi.advanceTimersByTimeAsync(1000);
    expect(s.sent[2]).toEqual({ op: Op.HEARTBEAT, d: 2 });
  });

  it("answers a server HEARTBEAT request at once", async () => {
    makeClient().connect();
    const s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s, 1);
    s.push({ op: Op.HEARTBEAT });
    expect(s.sent.at(-1)).toEqual({ op: Op.HEARTBEAT, d: 1 });
  });

  it("passes dispatches to listeners in order", async () => {
    makeClient().connect();
    const seen: string[] = [];
    client.on("dispatch", (e, seq) => seen.push(`${seq}:${e.t}`));
    const s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s);
    dispatch(s, 2);
    expect(seen).toEqual(["1:READY", "2:PRESENCE_UPDATE"]);
  });
});

describe("resume", () => {
  it("after a dropped connection, reconnects with backoff and RESUMEs with session id and last seq", async () => {
    makeClient().connect();
    let s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s);
    dispatch(s, 2);
    dispatch(s, 3);
    s.drop(1006);
    expect(client.status).toBe("reconnecting");
    expect(sockets).toHaveLength(1);
    // Full jitter: random 0.5 × min(30 s, 1 s · 2^0) = 500 ms.
    await vi.advanceTimersByTimeAsync(499);
    expect(sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets).toHaveLength(2);
    s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    expect(s.sent[0]).toEqual({ op: Op.RESUME, d: { token: "tok", session_id: "sess-1", seq: 3 } });
    s.push({ op: Op.DISPATCH, s: 4, t: "RESUMED", d: {} });
    expect(client.status).toBe("ready");
    expect(client.session).toEqual({ sessionId: "sess-1", seq: 4 });
  });

  it("backs off exponentially up to the cap while the node stays down", async () => {
    makeClient(() => 1).connect();
    const delays: number[] = [];
    for (let i = 0; i < 7; i++) delays.push(client.backoffDelay(i));
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    // Each failed attempt waits longer before the next socket is opened.
    last().drop(1006);
    await vi.advanceTimersByTimeAsync(1000);
    expect(sockets).toHaveLength(2);
    last().drop(1006);
    await vi.advanceTimersByTimeAsync(1999);
    expect(sockets).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets).toHaveLength(3);
  });

  it("a missed HEARTBEAT_ACK drops the zombie connection and resumes", async () => {
    makeClient().connect();
    const s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 1000 } });
    await flush();
    ready(s, 5);
    await vi.advanceTimersByTimeAsync(500); // first beat, never acknowledged
    await vi.advanceTimersByTimeAsync(1000); // next beat finds no ACK
    expect(s.closed).not.toBeNull();
    await vi.advanceTimersByTimeAsync(1000);
    const s2 = last();
    expect(s2).not.toBe(s);
    s2.push({ op: Op.HELLO, d: { heartbeat_interval: 1000 } });
    await flush();
    expect(s2.sent[0].op).toBe(Op.RESUME);
  });

  it("RECONNECT from the server leads to a RESUME", async () => {
    makeClient().connect();
    const s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s, 2);
    s.push({ op: Op.RECONNECT, d: null });
    await vi.advanceTimersByTimeAsync(1000);
    last().push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    expect(last().sent[0]).toMatchObject({ op: Op.RESUME, d: { seq: 2 } });
  });

  it("INVALID_SESSION false forgets the session and identifies again", async () => {
    makeClient().connect();
    let s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s, 7);
    s.drop(1001);
    await vi.advanceTimersByTimeAsync(1000);
    s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    expect(s.sent[0].op).toBe(Op.RESUME);
    s.push({ op: Op.INVALID_SESSION, d: false });
    expect(client.session).toEqual({ sessionId: null, seq: null });
    await vi.advanceTimersByTimeAsync(5000);
    s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    expect(s.sent[0]).toEqual({ op: Op.IDENTIFY, d: { token: "tok" } });
  });
});

describe("close codes", () => {
  it.each([4000, 4009, 4010, 4013])("%i is resumable", async (code) => {
    makeClient().connect();
    let s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s, 3);
    s.drop(code);
    await vi.advanceTimersByTimeAsync(1000);
    s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    expect(s.sent[0].op).toBe(Op.RESUME);
  });

  it.each([4001, 4002, 4003, 4005, 4008, 4011])("%i reconnects with a fresh IDENTIFY", async (code) => {
    makeClient().connect();
    let s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    ready(s, 3);
    s.drop(code);
    await vi.advanceTimersByTimeAsync(1000);
    s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    expect(s.sent[0].op).toBe(Op.IDENTIFY);
  });

  it.each([4004, 4012])("%i stops and reports the session as over", async (code) => {
    makeClient().connect();
    const fatal = vi.fn();
    client.on("fatal", fatal);
    const s = last();
    s.push({ op: Op.HELLO, d: { heartbeat_interval: 45000 } });
    await flush();
    s.drop(code, "bye");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(1);
    expect(fatal).toHaveBeenCalledWith(code, "bye");
    expect(client.status).toBe("closed");
  });

  it("disconnect() closes cleanly and never reconnects", async () => {
    makeClient().connect();
    const s = last();
    client.disconnect();
    expect(s.closed?.code).toBe(1000);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(1);
  });
});
