import { describe, expect, it } from "vitest";
import { ApiError, RestClient, memoryStorage } from "../src/index.ts";
import { ME } from "./fixtures.ts";

type Handler = (req: Request) => Response | Promise<Response>;

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function fakeNode(handler: Handler) {
  const log: { method: string; path: string; auth: string | null }[] = [];
  const fetchImpl = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const req = input instanceof Request ? input : new Request(input, init);
    log.push({ method: req.method, path: new URL(req.url).pathname, auth: req.headers.get("authorization") });
    return handler(req);
  }) as typeof fetch;
  return { fetchImpl, log };
}

const auth = (n: number) => ({
  access_token: `access-${n}`, refresh_token: `refresh-${n}`, token_type: "Bearer", expires_in: 900, session_id: "sess", user: ME,
});

describe("RestClient", () => {
  it("sends the bearer token and returns typed bodies", async () => {
    const { fetchImpl, log } = fakeNode(() => json(200, ME));
    const rest = new RestClient({ baseUrl: "http://node", fetch: fetchImpl, storage: memoryStorage({ access_token: "a", refresh_token: "r", session_id: "s" }) });
    const me = await rest.me();
    expect(me.username).toBe("alice");
    expect(log[0]).toEqual({ method: "GET", path: "/api/users/@me", auth: "Bearer a" });
  });

  it("surfaces the node's {code, message} as an ApiError", async () => {
    const { fetchImpl } = fakeNode(() => json(409, { code: "username_taken", message: "that username is taken" }));
    const rest = new RestClient({ baseUrl: "http://node", fetch: fetchImpl });
    const err = await rest.register({ username: "alice", password: "password123" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 409, code: "username_taken", message: "that username is taken" });
  });

  it("on token_expired refreshes once, rotates tokens, and retries the request", async () => {
    let refreshes = 0;
    const { fetchImpl, log } = fakeNode(async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/api/auth/refresh") {
        refreshes += 1;
        expect(await req.json()).toEqual({ refresh_token: "refresh-1" });
        return json(200, auth(2));
      }
      if (req.headers.get("authorization") === "Bearer access-1") {
        return json(401, { code: "token_expired", message: "the access token has expired; refresh it" });
      }
      return json(200, { channel_id: "c", ok: true, path, body: req.method === "POST" ? await req.json() : null });
    });
    const storage = memoryStorage(auth(1));
    const rest = new RestClient({ baseUrl: "http://node", fetch: fetchImpl, storage });
    // Two requests at once: one refresh between them (a refresh token works once).
    const [a, b] = await Promise.all([rest.me(), rest.sendMessage("c", { content: "hello" })]);
    expect(refreshes).toBe(1);
    expect(a).toMatchObject({ ok: true });
    expect(b).toMatchObject({ body: { content: "hello" } });
    expect(storage.load()).toMatchObject({ access_token: "access-2", refresh_token: "refresh-2" });
    expect(log.filter((l) => l.auth === "Bearer access-2")).toHaveLength(2);
  });

  it("with refreshCookie the refresh token stays in the node's cookie, never in storage", async () => {
    const seen: { path: string; optIn: string | null; body: unknown; credentials: RequestCredentials }[] = [];
    const { fetchImpl } = fakeNode(async (req) => {
      const path = new URL(req.url).pathname;
      seen.push({ path, optIn: req.headers.get("together-refresh-cookie"), body: await req.clone().json().catch(() => null), credentials: req.credentials });
      if (path === "/api/auth/login") return json(200, { ...auth(1), refresh_token: "" });
      if (path === "/api/auth/refresh") return json(200, { ...auth(2), refresh_token: "" });
      if (req.headers.get("authorization") === "Bearer access-1") return json(401, { code: "token_expired", message: "expired" });
      return json(200, ME);
    });
    const storage = memoryStorage();
    const rest = new RestClient({ baseUrl: "http://node", fetch: fetchImpl, storage, refreshCookie: true });
    await rest.login({ username: "alice", password: "password123" });
    expect(seen[0]).toMatchObject({ path: "/api/auth/login", optIn: "1" });
    expect(storage.load()).toMatchObject({ access_token: "access-1", refresh_token: "" });
    await rest.me();
    const refresh = seen.find((s) => s.path === "/api/auth/refresh");
    expect(refresh).toMatchObject({ optIn: "1", body: { refresh_token: "" }, credentials: "same-origin" });
    expect(storage.load()).toMatchObject({ access_token: "access-2", refresh_token: "" });
  });

  it("a refused refresh signs out and reports why", async () => {
    const { fetchImpl } = fakeNode((req) =>
      new URL(req.url).pathname === "/api/auth/refresh"
        ? json(401, { code: "refresh_token_reused", message: "this refresh token was already used; signed out" })
        : json(401, { code: "token_expired", message: "expired" }),
    );
    const rest = new RestClient({ baseUrl: "http://node", fetch: fetchImpl, storage: memoryStorage(auth(1)) });
    const signedOut: unknown[] = [];
    rest.tokens.subscribe((t) => signedOut.push(t));
    const err = await rest.me().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "refresh_token_reused" });
    expect(rest.tokens.current).toBeNull();
    expect(signedOut).toEqual([null]);
  });

  it("other 401s are not retried", async () => {
    let calls = 0;
    const { fetchImpl } = fakeNode(() => {
      calls += 1;
      return json(401, { code: "session_revoked", message: "signed out" });
    });
    const rest = new RestClient({ baseUrl: "http://node", fetch: fetchImpl, storage: memoryStorage(auth(1)) });
    await expect(rest.me()).rejects.toMatchObject({ code: "session_revoked" });
    expect(calls).toBe(1);
  });

  it("network failures become a NetworkError with words for people", async () => {
    const rest = new RestClient({
      baseUrl: "http://node",
      fetch: (async () => {
        throw new TypeError("fetch failed");
      }) as typeof fetch,
    });
    await expect(rest.me()).rejects.toMatchObject({ name: "NetworkError", message: expect.stringMatching(/cannot reach the node/) });
  });
});
