/**
 * The typed REST client. Routes and shapes come from the generated OpenAPI
 * types through openapi-fetch; this layer adds the bearer token, refreshes
 * it once on `token_expired` and retries, and turns every failure into an
 * {@link ApiError} carrying the node's `{code, message}`.
 */
import createClient, { type Client } from "openapi-fetch";
import type { paths } from "./generated/api.ts";
import { ApiError, NetworkError } from "./errors.ts";
import { REFRESH_COOKIE_HEADER, TokenManager, type TokenStorage } from "./tokens.ts";
import { signInProof, type SignInChallenge, type SignInRequest, type UserKey } from "./identity.ts";
import type {
  Attachment, AuthResponse, Ban, ExportedKey, NodeDescription, Channel, ChannelPatch, CreateServer, CurrentUser, EffectivePermissions, Invite,
  Member, Message, NewChannel, NewInvite, NewRole, OverrideInput, Presence, Role, RolePatch, SearchResponse, Server,
  ServerPatch, Session, UpdateMeRequest, User,
} from "./types.ts";

export interface RestOptions {
  /** The node's origin, e.g. `https://chat.example.org`; `""` for the page's own. */
  baseUrl: string;
  storage?: TokenStorage;
  fetch?: typeof fetch;
  /**
   * Keep the refresh token in the node's HttpOnly cookie instead of
   * `storage` (spec/rest.md §2). Only for a page served by that node: the
   * cookie is same-site only.
   */
  refreshCookie?: boolean;
}

type Result<T> = { data?: T; error?: unknown; response: Response };

/** Resolves to the body of a successful call or throws its ApiError. */
async function unwrap<T>(call: Promise<Result<T>>): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok) {
    const retry = response.headers.get("retry-after");
    throw ApiError.fromBody(response.status, error, retry && /^\d+$/.test(retry) ? Number(retry) : null);
  }
  return data as T;
}

/** An upload in flight: its progress and a way to cancel it. */
export interface UploadProgress {
  loaded: number;
  total: number;
}

export interface HistoryQuery {
  before?: string;
  after?: string;
  around?: string;
  limit?: number;
}

export class RestClient {
  readonly baseUrl: string;
  readonly tokens: TokenManager;
  /** The raw openapi-fetch client, for routes this class does not wrap. */
  readonly raw: Client<paths>;
  private readonly fetchImpl: typeof fetch;

  constructor(options: RestOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? ((...args) => globalThis.fetch(...args));
    this.tokens = new TokenManager(this.baseUrl, options.storage, this.fetchImpl, options.refreshCookie ?? false);
    this.raw = createClient<paths>({ baseUrl: this.baseUrl, fetch: (req) => this.authedFetch(req) });
  }

  /** Sends a request with the access token; on `token_expired` refreshes once and retries. */
  private async authedFetch(req: Request): Promise<Response> {
    const retry = req.clone();
    const used = this.tokens.accessToken;
    let res = await this.send(req, used);
    if (res.status !== 401 || !used) return res;
    const body = (await res.clone().json().catch(() => null)) as { code?: string } | null;
    if (body?.code !== "token_expired") return res;
    if (this.tokens.accessToken === used) await this.tokens.refresh();
    res = await this.send(retry, this.tokens.accessToken);
    return res;
  }

  private async send(req: Request, token: string | null): Promise<Response> {
    if (token) req.headers.set("authorization", `Bearer ${token}`);
    try {
      return await this.fetchImpl(req);
    } catch {
      throw new NetworkError();
    }
  }

  /** A valid access token, refreshed first if it expires within `marginSeconds`. */
  async freshAccessToken(marginSeconds = 30): Promise<string> {
    const token = this.tokens.accessToken;
    if (!token) throw new ApiError(401, "missing_token", "sign in first");
    const exp = jwtExpiry(token);
    if (exp !== null && exp - marginSeconds * 1000 < Date.now()) {
      return (await this.tokens.refresh()).access_token;
    }
    return token;
  }

  // ---- auth ----

  /** Headers of the requests that start a session: the cookie opt-in. */
  private issuingHeaders(): Record<string, string> {
    return this.tokens.refreshCookie ? { [REFRESH_COOKIE_HEADER]: "1" } : {};
  }

  async register(body: { username: string; password: string; email?: string | null }): Promise<AuthResponse> {
    const auth = await unwrap(this.raw.POST("/api/auth/register", { body, headers: this.issuingHeaders() }));
    this.tokens.set(auth);
    return auth;
  }

  async login(body: { username: string; password: string }): Promise<AuthResponse> {
    const auth = await unwrap(this.raw.POST("/api/auth/login", { body, headers: this.issuingHeaders() }));
    this.tokens.set(auth);
    return auth;
  }

  /** Ends the session on the node (best effort) and forgets the tokens. */
  async logout(): Promise<void> {
    try {
      if (this.tokens.current) await unwrap(this.raw.POST("/api/auth/logout"));
    } finally {
      this.tokens.set(null);
    }
  }

  /** A single-use sign-in challenge (`POST /api/auth/challenge`). */
  challenge(): Promise<SignInChallenge> {
    return unwrap(this.raw.POST("/api/auth/challenge"));
  }

  /** Answers a challenge (`POST /api/auth/verify`) and keeps the session's tokens. */
  async verifyChallenge(body: SignInRequest): Promise<AuthResponse> {
    const request = body as unknown as paths["/api/auth/verify"]["post"]["requestBody"]["content"]["application/json"];
    const auth = await unwrap(this.raw.POST("/api/auth/verify", { body: request, headers: this.issuingHeaders() }));
    this.tokens.set(auth);
    return auth;
  }

  /**
   * Signs in with a user key (spec/identity.md §7): fetches a challenge,
   * signs it and a delegation to this node in the browser, sends the proof.
   * `username` names the user on a node that has not seen the key before.
   */
  async signInWithKey(key: UserKey, username?: string): Promise<AuthResponse> {
    const challenge = await this.challenge();
    return this.verifyChallenge(signInProof(key, challenge, Math.floor(Date.now() / 1000), username));
  }

  /** The account's identity key, after the node checks the password again. */
  exportKey(password: string): Promise<ExportedKey> {
    return unwrap(this.raw.POST("/api/users/@me/key", { body: { password } }));
  }

  listSessions(): Promise<Session[]> {
    return unwrap(this.raw.GET("/api/auth/sessions"));
  }

  // ---- users ----

  me(): Promise<CurrentUser> {
    return unwrap(this.raw.GET("/api/users/@me"));
  }

  updateMe(body: UpdateMeRequest): Promise<CurrentUser> {
    return unwrap(this.raw.PATCH("/api/users/@me", { body }));
  }

  myServers(): Promise<Server[]> {
    return unwrap(this.raw.GET("/api/users/@me/servers"));
  }

  getUser(userId: string): Promise<User> {
    return unwrap(this.raw.GET("/api/users/{user_id}", { params: { path: { user_id: userId } } }));
  }

  // ---- servers ----

  createServer(body: CreateServer): Promise<Server> {
    return unwrap(this.raw.POST("/api/servers", { body }));
  }

  getServer(serverId: string): Promise<Server> {
    return unwrap(this.raw.GET("/api/servers/{server_id}", { params: { path: { server_id: serverId } } }));
  }

  updateServer(serverId: string, body: ServerPatch): Promise<Server> {
    return unwrap(this.raw.PATCH("/api/servers/{server_id}", { params: { path: { server_id: serverId } }, body }));
  }

  async deleteServer(serverId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/servers/{server_id}", { params: { path: { server_id: serverId } } }));
  }

  permissions(serverId: string): Promise<EffectivePermissions> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/permissions", { params: { path: { server_id: serverId } } }));
  }

  /** Who is online in a server (the member list of a `large` server needs this; READY leaves it out). */
  async listPresences(serverId: string): Promise<Presence[]> {
    const list = await unwrap(this.raw.GET("/api/servers/{server_id}/presences", { params: { path: { server_id: serverId } } }));
    return list as Presence[];
  }

  // ---- members and bans ----

  listMembers(serverId: string, query: { after?: string; limit?: number } = {}): Promise<Member[]> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/members", { params: { path: { server_id: serverId }, query } }));
  }

  /** Every member, page by page. */
  async allMembers(serverId: string): Promise<Member[]> {
    const all: Member[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.listMembers(serverId, { after, limit: 1000 });
      all.push(...page);
      if (page.length < 1000) return all;
      after = page[page.length - 1].user.id;
    }
  }

  updateMember(serverId: string, userId: string, body: { nickname?: string | null; roles?: string[] | null }): Promise<Member> {
    return unwrap(this.raw.PATCH("/api/servers/{server_id}/members/{user_id}", {
      params: { path: { server_id: serverId, user_id: userId } }, body,
    }));
  }

  setMemberRoles(serverId: string, userId: string, roleIds: string[]): Promise<Member> {
    return unwrap(this.raw.PUT("/api/servers/{server_id}/members/{user_id}/roles", {
      params: { path: { server_id: serverId, user_id: userId } }, body: { role_ids: roleIds },
    }));
  }

  /** Kicks a member, or leaves with `userId = "@me"`. */
  async removeMember(serverId: string, userId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/servers/{server_id}/members/{user_id}", {
      params: { path: { server_id: serverId, user_id: userId } },
    }));
  }

  listBans(serverId: string): Promise<Ban[]> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/bans", { params: { path: { server_id: serverId } } }));
  }

  async ban(serverId: string, userId: string, reason?: string): Promise<void> {
    await unwrap(this.raw.PUT("/api/servers/{server_id}/bans/{user_id}", {
      params: { path: { server_id: serverId, user_id: userId } }, body: { reason: reason || null },
    }));
  }

  async unban(serverId: string, userId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/servers/{server_id}/bans/{user_id}", {
      params: { path: { server_id: serverId, user_id: userId } },
    }));
  }

  // ---- invites ----

  createInvite(serverId: string, body: NewInvite = {}): Promise<Invite> {
    return unwrap(this.raw.POST("/api/servers/{server_id}/invites", { params: { path: { server_id: serverId } }, body }));
  }

  listInvites(serverId: string): Promise<Invite[]> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/invites", { params: { path: { server_id: serverId } } }));
  }

  getInvite(code: string): Promise<Invite> {
    return unwrap(this.raw.GET("/api/invites/{code}", { params: { path: { code } } }));
  }

  /**
   * Joins a community hosted on another node: this node dials `peer`
   * (a multiaddr ending in `/p2p/<peer id>`) and redeems `code` there.
   */
  joinRemote(code: string, peer: string): Promise<Server> {
    return unwrap(this.raw.POST("/api/federation/join", { body: { code, peer } }));
  }

  /** The node's identity and the peer addresses an invite can carry (`GET /api/node`). */
  nodeInfo(): Promise<NodeDescription> {
    return unwrap(this.raw.GET("/api/node"));
  }

  acceptInvite(code: string): Promise<Server> {
    return unwrap(this.raw.POST("/api/invites/{code}", { params: { path: { code } } }));
  }

  async deleteInvite(code: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/invites/{code}", { params: { path: { code } } }));
  }

  // ---- channels ----

  listChannels(serverId: string): Promise<Channel[]> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/channels", { params: { path: { server_id: serverId } } }));
  }

  createChannel(serverId: string, body: NewChannel): Promise<Channel> {
    return unwrap(this.raw.POST("/api/servers/{server_id}/channels", { params: { path: { server_id: serverId } }, body }));
  }

  updateChannel(channelId: string, body: ChannelPatch): Promise<Channel> {
    return unwrap(this.raw.PATCH("/api/channels/{channel_id}", { params: { path: { channel_id: channelId } }, body }));
  }

  async deleteChannel(channelId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/channels/{channel_id}", { params: { path: { channel_id: channelId } } }));
  }

  setChannelOverride(channelId: string, targetId: string, body: OverrideInput): Promise<Channel> {
    return unwrap(this.raw.PUT("/api/channels/{channel_id}/permissions/{target_id}", {
      params: { path: { channel_id: channelId, target_id: targetId } }, body,
    }));
  }

  async deleteChannelOverride(channelId: string, targetId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/channels/{channel_id}/permissions/{target_id}", {
      params: { path: { channel_id: channelId, target_id: targetId } },
    }));
  }

  // ---- roles ----

  listRoles(serverId: string): Promise<Role[]> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/roles", { params: { path: { server_id: serverId } } }));
  }

  createRole(serverId: string, body: NewRole): Promise<Role> {
    return unwrap(this.raw.POST("/api/servers/{server_id}/roles", { params: { path: { server_id: serverId } }, body }));
  }

  updateRole(roleId: string, body: RolePatch): Promise<Role> {
    return unwrap(this.raw.PATCH("/api/roles/{role_id}", { params: { path: { role_id: roleId } }, body }));
  }

  async deleteRole(roleId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/roles/{role_id}", { params: { path: { role_id: roleId } } }));
  }

  // ---- messages ----

  /** A page of history, newest first. */
  listMessages(channelId: string, query: HistoryQuery = {}): Promise<Message[]> {
    return unwrap(this.raw.GET("/api/channels/{channel_id}/messages", {
      params: { path: { channel_id: channelId }, query },
    }));
  }

  sendMessage(channelId: string, body: { content: string; reply_to?: string | null; attachment_ids?: string[] }): Promise<Message> {
    return unwrap(this.raw.POST("/api/channels/{channel_id}/messages", { params: { path: { channel_id: channelId } }, body }));
  }

  editMessage(messageId: string, content: string): Promise<Message> {
    return unwrap(this.raw.PATCH("/api/messages/{message_id}", { params: { path: { message_id: messageId } }, body: { content } }));
  }

  async deleteMessage(messageId: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/messages/{message_id}", { params: { path: { message_id: messageId } } }));
  }

  async addReaction(messageId: string, emoji: string): Promise<void> {
    await unwrap(this.raw.POST("/api/messages/{message_id}/reactions", { params: { path: { message_id: messageId } }, body: { emoji } }));
  }

  async removeReaction(messageId: string, emoji: string): Promise<void> {
    await unwrap(this.raw.DELETE("/api/messages/{message_id}/reactions/{emoji}", {
      params: { path: { message_id: messageId, emoji } },
    }));
  }

  search(serverId: string, query: { q: string; channel_id?: string; author_id?: string; before?: string; limit?: number }): Promise<SearchResponse> {
    return unwrap(this.raw.GET("/api/servers/{server_id}/messages/search", {
      params: { path: { server_id: serverId }, query },
    }));
  }

  async startTyping(channelId: string): Promise<void> {
    await unwrap(this.raw.POST("/api/channels/{channel_id}/typing", { params: { path: { channel_id: channelId } } }));
  }

  // ---- attachments ----

  /**
   * Uploads a file for a message not yet sent, reporting progress.
   * Uses XMLHttpRequest because fetch has no upload progress events.
   */
  async upload(
    channelId: string,
    file: Blob,
    filename: string,
    onProgress?: (p: UploadProgress) => void,
    signal?: AbortSignal,
  ): Promise<Attachment> {
    const attempt = (token: string) =>
      xhrUpload(`${this.baseUrl}/api/channels/${encodeURIComponent(channelId)}/attachments`, token, file, filename, onProgress, signal);
    const token = await this.freshAccessToken();
    try {
      return await attempt(token);
    } catch (err) {
      if (err instanceof ApiError && err.code === "token_expired") {
        return attempt((await this.tokens.refresh()).access_token);
      }
      throw err;
    }
  }

  /** Downloads an attachment (it needs the bearer token, so `<img src>` cannot fetch it). */
  async fetchAttachment(urlOrId: string): Promise<Blob> {
    const url = urlOrId.includes("/") ? absolute(this.baseUrl, urlOrId) : `${this.baseUrl}/api/attachments/${urlOrId}`;
    const res = await this.authedFetch(new Request(url));
    if (!res.ok) throw await ApiError.fromResponse(res);
    return res.blob();
  }
}

function absolute(base: string, url: string): string {
  if (/^https?:\/\//.test(url)) return url;
  return `${base}${url.startsWith("/") ? "" : "/"}${url}`;
}

/** The `exp` of a JWT in milliseconds, or null when it cannot be read. */
export function jwtExpiry(token: string): number | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}

function xhrUpload(
  url: string,
  token: string,
  file: Blob,
  filename: string,
  onProgress?: (p: UploadProgress) => void,
  signal?: AbortSignal,
): Promise<Attachment> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("authorization", `Bearer ${token}`);
    xhr.responseType = "text";
    xhr.upload.onprogress = (e) => onProgress?.({ loaded: e.loaded, total: e.lengthComputable ? e.total : file.size });
    xhr.onload = () => {
      let body: unknown = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress?.({ loaded: file.size, total: file.size });
        resolve(body as Attachment);
      } else {
        reject(ApiError.fromBody(xhr.status, body));
      }
    };
    xhr.onerror = () => reject(new NetworkError("the upload failed: cannot reach the node"));
    xhr.onabort = () => reject(new DOMException("upload cancelled", "AbortError"));
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    const form = new FormData();
    form.append("file", file, filename);
    xhr.send(form);
  });
}
