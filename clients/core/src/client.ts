/**
 * `Together`: one object a client app holds. It ties the REST client, the
 * gateway and the store together: it connects the gateway with a fresh
 * token, applies every dispatch to the store, and loads history and
 * members into the store.
 */
import { GatewayClient, gatewayUrl, type GatewayStatus, type SocketFactory } from "./gateway.ts";
import { RestClient } from "./rest.ts";
import { Store } from "./store.ts";
import { VoiceClient, type VoiceEnvironment } from "./voice.ts";
import type { TokenStorage } from "./tokens.ts";
import type { Message, Status } from "./types.ts";

export interface TogetherOptions {
  /** The node's http(s) origin; `""` for the page's own origin. */
  baseUrl: string;
  storage?: TokenStorage;
  fetch?: typeof fetch;
  /** Keep the refresh token in the node's HttpOnly cookie (a page the node serves). */
  refreshCookie?: boolean;
  socket?: SocketFactory;
  presence?: { status: Status; custom_status?: string | null };
  /** Browser media APIs for voice (the real ones by default). */
  voice?: VoiceEnvironment;
}

export const PAGE_SIZE = 50;

export class Together {
  readonly rest: RestClient;
  readonly store = new Store();
  readonly gateway: GatewayClient;
  readonly voice: VoiceClient;

  constructor(options: TogetherOptions) {
    this.rest = new RestClient({
      baseUrl: options.baseUrl,
      storage: options.storage,
      fetch: options.fetch,
      refreshCookie: options.refreshCookie,
    });
    this.gateway = new GatewayClient({
      url: gatewayUrl(this.rest.baseUrl),
      token: () => this.rest.freshAccessToken(),
      socket: options.socket,
      presence: options.presence,
    });
    this.gateway.on("dispatch", (event) => {
      this.store.apply(event);
      // A newcomer's presence is not dispatched to the members they join: ask for it.
      if (event.t === "SERVER_MEMBER_ADD" && event.d.user.id !== this.store.getState().me?.id) {
        this.loadPresences(event.d.server_id).catch(() => undefined);
      }
    });
    this.voice = new VoiceClient(this.gateway, this.store, options.voice);
    this.gateway.on("fatal", () => {
      this.rest.tokens.set(null);
    });
  }

  get signedIn(): boolean {
    return this.rest.tokens.current !== null;
  }

  /** Connects the gateway (after sign-in or with stored tokens). */
  start(): void {
    this.store.startTypingClock();
    this.gateway.connect();
  }

  stop(): void {
    this.voice.leave();
    this.gateway.disconnect();
    this.store.stopTypingClock();
    this.store.dispatch({ type: "reset" });
  }

  async logout(): Promise<void> {
    this.stop();
    await this.rest.logout().catch(() => undefined);
  }

  onStatus(handler: (s: GatewayStatus) => void): () => void {
    return this.gateway.on("status", handler);
  }

  /** Loads the newest page of a channel. */
  async loadLatest(channelId: string): Promise<Message[]> {
    const messages = await this.rest.listMessages(channelId, { limit: PAGE_SIZE });
    this.store.dispatch({ type: "messages/loaded", channelId, messages, direction: "latest", limit: PAGE_SIZE });
    return messages;
  }

  /** Loads the page before the oldest message held (keyset on `before`). */
  async loadOlder(channelId: string): Promise<Message[]> {
    const entry = this.store.getState().messages[channelId];
    const oldest = entry?.order[0];
    if (!oldest) return this.loadLatest(channelId);
    const messages = await this.rest.listMessages(channelId, { before: oldest, limit: PAGE_SIZE });
    this.store.dispatch({ type: "messages/loaded", channelId, messages, direction: "before", limit: PAGE_SIZE });
    return messages;
  }

  /** Loads every member of a server and who of them is online. */
  async loadMembers(serverId: string): Promise<void> {
    const [members] = await Promise.all([this.rest.allMembers(serverId), this.loadPresences(serverId).catch(() => undefined)]);
    this.store.dispatch({ type: "members/loaded", serverId, members });
  }

  async loadPresences(serverId: string): Promise<void> {
    const presences = await this.rest.listPresences(serverId);
    this.store.dispatch({ type: "presences/loaded", presences });
  }

  /** Sends a message and puts it in the store at once (the gateway echo is merged, not duplicated). */
  async send(channelId: string, content: string, options: { replyTo?: string | null; attachmentIds?: string[] } = {}): Promise<Message> {
    const message = await this.rest.sendMessage(channelId, {
      content,
      reply_to: options.replyTo ?? null,
      attachment_ids: options.attachmentIds ?? [],
    });
    this.store.dispatch({ type: "message/upsert", message });
    return message;
  }
}
