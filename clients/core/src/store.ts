/**
 * The client's cache of what the user can see: servers, channels, roles,
 * members, messages, presence, typing and unread state. `reduce` is a pure
 * function of (state, action), applied to READY, every dispatch event and
 * the results of REST calls; {@link Store} holds the current state and
 * tells subscribers (React's useSyncExternalStore) when it changes.
 */
import type {
  Channel, CurrentUser, Dispatch, Member, Message, Presence, ReadyServer, Role, Server, User, VoiceState,
} from "./types.ts";

/** How long a typing indicator lasts without renewal (spec/gateway.md). */
export const TYPING_TTL_MS = 10_000;

export interface ServerEntry {
  server: Server;
  roles: Record<string, Role>;
  /** The signed-in user's own membership. */
  member: Member;
  memberCount: number;
}

export interface ChannelMessages {
  /** Message ids, oldest first (ids are time-ordered UUIDv7, so string order is time order). */
  order: string[];
  byId: Record<string, Message>;
  /** No older messages exist beyond the first one held. */
  reachedStart: boolean;
  /** The latest page has been fetched at least once. */
  loaded: boolean;
}

export interface State {
  me: CurrentUser | null;
  sessionId: string | null;
  servers: Record<string, ServerEntry>;
  channels: Record<string, Channel>;
  /** Members by server, then user id (filled by REST pages and member events). */
  members: Record<string, Record<string, Member>>;
  users: Record<string, User>;
  messages: Record<string, ChannelMessages>;
  presences: Record<string, Presence>;
  /** Who is typing: channel → user → expiry (ms since epoch). */
  typing: Record<string, Record<string, number>>;
  /** Newest message id known per channel. */
  lastMessageId: Record<string, string>;
  /** Newest message id the user has seen per channel. */
  lastReadId: Record<string, string>;
  /** The channel on screen, whose new messages count as read. */
  activeChannelId: string | null;
  /** Who is in voice, by user id (a user is in at most one voice channel). */
  voiceStates: Record<string, VoiceState>;
  /** Users speaking now: user id → the voice channel they speak in. */
  speaking: Record<string, string>;
}

export const initialState: State = {
  me: null,
  sessionId: null,
  servers: {},
  channels: {},
  members: {},
  users: {},
  messages: {},
  presences: {},
  typing: {},
  lastMessageId: {},
  lastReadId: {},
  activeChannelId: null,
  voiceStates: {},
  speaking: {},
};

export type Action =
  | { type: "dispatch"; event: Dispatch; now?: number }
  | { type: "messages/loaded"; channelId: string; messages: Message[]; direction: "latest" | "before" | "after"; limit: number }
  | { type: "message/upsert"; message: Message }
  | { type: "members/loaded"; serverId: string; members: Member[] }
  | { type: "presences/loaded"; presences: Presence[] }
  | { type: "channel/open"; channelId: string | null }
  | { type: "channel/read"; channelId: string; messageId?: string }
  | { type: "typing/prune"; now: number }
  | { type: "reset" };

const emptyMessages: ChannelMessages = { order: [], byId: {}, reachedStart: false, loaded: false };

function without<T>(record: Record<string, T>, key: string): Record<string, T> {
  if (!(key in record)) return record;
  const copy = { ...record };
  delete copy[key];
  return copy;
}

function maxId(a: string | undefined, b: string): string {
  return a && a > b ? a : b;
}

/** Inserts or replaces messages, keeping `order` sorted and unique. */
function mergeMessages(entry: ChannelMessages, messages: Message[]): ChannelMessages {
  const byId = { ...entry.byId };
  let added = false;
  for (const m of messages) {
    if (!(m.id in byId)) added = true;
    byId[m.id] = m;
  }
  const order = added ? Object.keys(byId).sort() : entry.order;
  return { ...entry, byId, order };
}

function addServer(state: State, rs: ReadyServer): State {
  const id = rs.server.id;
  const channels = { ...state.channels };
  for (const c of Object.values(channels)) if (c.server_id === id) delete channels[c.id];
  for (const c of rs.channels) channels[c.id] = c;
  const presences = { ...state.presences };
  for (const p of rs.presences ?? []) presences[p.user_id] = p;
  const roles: Record<string, Role> = {};
  for (const r of rs.roles) roles[r.id] = r;
  const members = { ...state.members, [id]: { ...(state.members[id] ?? {}), [rs.member.user.id]: rs.member } };
  const voiceStates: Record<string, VoiceState> = {};
  for (const v of Object.values(state.voiceStates)) if (v.server_id !== id) voiceStates[v.user_id] = v;
  for (const v of rs.voice_states ?? []) voiceStates[v.user_id] = v;
  return {
    ...state,
    servers: { ...state.servers, [id]: { server: rs.server, roles, member: rs.member, memberCount: rs.member_count } },
    channels,
    presences,
    members,
    voiceStates,
  };
}

function removeServer(state: State, serverId: string): State {
  if (!state.servers[serverId]) return state;
  const channels: Record<string, Channel> = {};
  let messages = state.messages;
  let typing = state.typing;
  for (const c of Object.values(state.channels)) {
    if (c.server_id === serverId) {
      messages = without(messages, c.id);
      typing = without(typing, c.id);
    } else channels[c.id] = c;
  }
  const active = state.activeChannelId && channels[state.activeChannelId] ? state.activeChannelId : null;
  const voiceStates: Record<string, VoiceState> = {};
  for (const v of Object.values(state.voiceStates)) if (v.server_id !== serverId) voiceStates[v.user_id] = v;
  const speaking: Record<string, string> = {};
  for (const [u, ch] of Object.entries(state.speaking)) if (channels[ch]) speaking[u] = ch;
  return {
    ...state,
    servers: without(state.servers, serverId),
    members: without(state.members, serverId),
    channels,
    messages,
    typing,
    activeChannelId: active,
    voiceStates,
    speaking,
  };
}

function removeChannel(state: State, channelId: string): State {
  if (!state.channels[channelId]) return state;
  const voiceStates: Record<string, VoiceState> = {};
  for (const v of Object.values(state.voiceStates)) if (v.channel_id !== channelId) voiceStates[v.user_id] = v;
  const speaking: Record<string, string> = {};
  for (const [u, ch] of Object.entries(state.speaking)) if (ch !== channelId) speaking[u] = ch;
  return {
    ...state,
    voiceStates,
    speaking,
    channels: without(state.channels, channelId),
    messages: without(state.messages, channelId),
    typing: without(state.typing, channelId),
    activeChannelId: state.activeChannelId === channelId ? null : state.activeChannelId,
  };
}

function updateMessage(state: State, channelId: string, id: string, f: (m: Message) => Message): State {
  const entry = state.messages[channelId];
  const m = entry?.byId[id];
  if (!entry || !m) return state;
  return { ...state, messages: { ...state.messages, [channelId]: { ...entry, byId: { ...entry.byId, [id]: f(m) } } } };
}

function stopTyping(state: State, channelId: string, userId: string): State {
  const ch = state.typing[channelId];
  if (!ch || !(userId in ch)) return state;
  return { ...state, typing: { ...state.typing, [channelId]: without(ch, userId) } };
}

function upsertMember(state: State, member: Member): State {
  const sid = member.server_id;
  let next: State = {
    ...state,
    members: { ...state.members, [sid]: { ...(state.members[sid] ?? {}), [member.user.id]: member } },
    users: { ...state.users, [member.user.id]: member.user },
  };
  const entry = next.servers[sid];
  if (entry && state.me && member.user.id === state.me.id) {
    next = { ...next, servers: { ...next.servers, [sid]: { ...entry, member } } };
  }
  return next;
}

function applyDispatch(state: State, event: Dispatch, now: number): State {
  switch (event.t) {
    case "READY": {
      let next: State = {
        ...initialState,
        me: event.d.user,
        sessionId: event.d.session_id,
        // Cached history stays valid across a re-identify; read markers too.
        messages: state.messages,
        lastReadId: state.lastReadId,
        lastMessageId: state.lastMessageId,
        activeChannelId: state.activeChannelId,
      };
      for (const rs of event.d.servers) next = addServer(next, rs);
      // Forget history of channels no longer visible.
      let messages = next.messages;
      for (const id of Object.keys(messages)) if (!next.channels[id]) messages = without(messages, id);
      return { ...next, messages };
    }
    case "RESUMED":
      return state;
    case "MESSAGE_CREATE": {
      const m = event.d;
      const entry = state.messages[m.channel_id] ?? emptyMessages;
      let next: State = {
        ...state,
        messages: { ...state.messages, [m.channel_id]: mergeMessages(entry, [m]) },
        users: { ...state.users, [m.author.id]: m.author },
        lastMessageId: { ...state.lastMessageId, [m.channel_id]: maxId(state.lastMessageId[m.channel_id], m.id) },
      };
      const own = state.me?.id === m.author.id;
      if (own || state.activeChannelId === m.channel_id) {
        next = { ...next, lastReadId: { ...next.lastReadId, [m.channel_id]: maxId(next.lastReadId[m.channel_id], m.id) } };
      }
      return stopTyping(next, m.channel_id, m.author.id);
    }
    case "MESSAGE_UPDATE": {
      const m = event.d;
      const entry = state.messages[m.channel_id];
      if (!entry?.byId[m.id]) return state;
      return { ...state, messages: { ...state.messages, [m.channel_id]: mergeMessages(entry, [m]) } };
    }
    case "MESSAGE_DELETE": {
      const { id, channel_id } = event.d;
      const entry = state.messages[channel_id];
      if (!entry?.byId[id]) return state;
      return {
        ...state,
        messages: {
          ...state.messages,
          [channel_id]: { ...entry, byId: without(entry.byId, id), order: entry.order.filter((x) => x !== id) },
        },
      };
    }
    case "MESSAGE_REACTION_ADD":
    case "MESSAGE_REACTION_REMOVE": {
      const { message_id, channel_id, user_id, emoji } = event.d;
      const add = event.t === "MESSAGE_REACTION_ADD";
      const mine = state.me?.id === user_id;
      return updateMessage(state, channel_id, message_id, (m) => {
        const reactions = [...m.reactions];
        const i = reactions.findIndex((r) => r.emoji === emoji);
        if (add) {
          if (i < 0) reactions.push({ emoji, count: 1, me: mine });
          else if (!(mine && reactions[i].me)) reactions[i] = { ...reactions[i], count: reactions[i].count + 1, me: reactions[i].me || mine };
        } else if (i >= 0) {
          if (mine && !reactions[i].me) return m;
          const count = reactions[i].count - 1;
          if (count <= 0) reactions.splice(i, 1);
          else reactions[i] = { ...reactions[i], count, me: mine ? false : reactions[i].me };
        }
        return { ...m, reactions };
      });
    }
    case "TYPING_START": {
      const { channel_id, user_id, expires_at } = event.d;
      if (state.me?.id === user_id) return state;
      const parsed = Date.parse(expires_at);
      const until = Number.isFinite(parsed) ? parsed : now + TYPING_TTL_MS;
      return { ...state, typing: { ...state.typing, [channel_id]: { ...(state.typing[channel_id] ?? {}), [user_id]: until } } };
    }
    case "CHANNEL_CREATE":
    case "CHANNEL_UPDATE": {
      if (!state.servers[event.d.server_id]) return state;
      return { ...state, channels: { ...state.channels, [event.d.id]: event.d } };
    }
    case "CHANNEL_DELETE":
      return removeChannel(state, event.d.id);
    case "SERVER_CREATE":
      return addServer(state, event.d);
    case "SERVER_UPDATE": {
      const entry = state.servers[event.d.id];
      if (!entry) return state;
      return { ...state, servers: { ...state.servers, [event.d.id]: { ...entry, server: event.d } } };
    }
    case "SERVER_DELETE":
      return removeServer(state, event.d.id);
    case "SERVER_MEMBER_ADD": {
      const entry = state.servers[event.d.server_id];
      if (!entry) return state;
      const known = !!state.members[event.d.server_id]?.[event.d.user.id];
      const next = upsertMember(state, event.d);
      const e2 = next.servers[event.d.server_id];
      return known ? next : { ...next, servers: { ...next.servers, [event.d.server_id]: { ...e2, memberCount: e2.memberCount + 1 } } };
    }
    case "SERVER_MEMBER_UPDATE":
      return state.servers[event.d.server_id] ? upsertMember(state, event.d) : state;
    case "SERVER_MEMBER_REMOVE": {
      const { server_id, user } = event.d;
      if (state.me?.id === user.id) return removeServer(state, server_id);
      const entry = state.servers[server_id];
      if (!entry) return state;
      const members = state.members[server_id] ?? {};
      return {
        ...state,
        members: { ...state.members, [server_id]: without(members, user.id) },
        servers: { ...state.servers, [server_id]: { ...entry, memberCount: Math.max(0, entry.memberCount - 1) } },
      };
    }
    case "SERVER_ROLE_CREATE":
    case "SERVER_ROLE_UPDATE": {
      const entry = state.servers[event.d.server_id];
      if (!entry) return state;
      const role = event.d.role;
      return { ...state, servers: { ...state.servers, [event.d.server_id]: { ...entry, roles: { ...entry.roles, [role.id]: role } } } };
    }
    case "SERVER_ROLE_DELETE": {
      const { server_id, role_id } = event.d;
      const entry = state.servers[server_id];
      if (!entry) return state;
      const strip = (m: Member): Member => (m.roles.includes(role_id) ? { ...m, roles: m.roles.filter((r) => r !== role_id) } : m);
      const members: Record<string, Member> = {};
      for (const [uid, m] of Object.entries(state.members[server_id] ?? {})) members[uid] = strip(m);
      return {
        ...state,
        servers: { ...state.servers, [server_id]: { ...entry, roles: without(entry.roles, role_id), member: strip(entry.member) } },
        members: { ...state.members, [server_id]: members },
      };
    }
    case "SERVER_BAN_ADD":
    case "SERVER_BAN_REMOVE":
      return state;
    case "PRESENCE_UPDATE":
      return { ...state, presences: { ...state.presences, [event.d.user_id]: event.d } };
    case "USER_UPDATE": {
      const u = event.d;
      const isMe = state.me?.id === u.id;
      const user: User = { id: u.id, username: u.username, tag: u.tag, avatar_url: u.avatar_url, public_key: u.public_key };
      let next: State = { ...state, users: { ...state.users, [u.id]: user } };
      if (isMe && "created_at" in u) next = { ...next, me: u };
      // Refresh the embedded user in cached memberships.
      const members = { ...next.members };
      for (const [sid, byUser] of Object.entries(members)) {
        if (byUser[u.id]) members[sid] = { ...byUser, [u.id]: { ...byUser[u.id], user } };
      }
      return { ...next, members };
    }
    case "VOICE_STATE_UPDATE": {
      const v = event.d;
      if (!state.servers[v.server_id]) return state;
      if (v.channel_id === null) {
        if (!state.voiceStates[v.user_id] && !state.speaking[v.user_id]) return state;
        return { ...state, voiceStates: without(state.voiceStates, v.user_id), speaking: without(state.speaking, v.user_id) };
      }
      const joined: VoiceState = v;
      const before = state.voiceStates[v.user_id];
      // Moving to another channel, or muting, ends speaking there.
      const stillSpeaking = before && before.channel_id === joined.channel_id && !joined.self_mute && !joined.self_deaf && !joined.server_mute;
      return {
        ...state,
        voiceStates: { ...state.voiceStates, [v.user_id]: joined },
        speaking: stillSpeaking ? state.speaking : without(state.speaking, v.user_id),
      };
    }
    case "VOICE_SPEAKING": {
      const { user_id, channel_id, speaking } = event.d;
      if (speaking) {
        if (state.speaking[user_id] === channel_id) return state;
        return { ...state, speaking: { ...state.speaking, [user_id]: channel_id } };
      }
      return state.speaking[user_id] ? { ...state, speaking: without(state.speaking, user_id) } : state;
    }
    case "VOICE_OFFER":
    case "VOICE_SESSION_END":
    case "VOICE_ERROR":
      // The voice client handles these; they change nothing others see.
      return state;
    default:
      return state;
  }
}

export function reduce(state: State, action: Action): State {
  switch (action.type) {
    case "dispatch":
      return applyDispatch(state, action.event, action.now ?? Date.now());
    case "messages/loaded": {
      const entry = state.messages[action.channelId] ?? emptyMessages;
      let next = mergeMessages(entry, action.messages);
      if (action.direction === "latest") next = { ...next, loaded: true };
      if (action.direction !== "after" && action.messages.length < action.limit) next = { ...next, reachedStart: true };
      const newest = next.order[next.order.length - 1];
      let lastMessageId = state.lastMessageId;
      if (newest) lastMessageId = { ...lastMessageId, [action.channelId]: maxId(lastMessageId[action.channelId], newest) };
      return { ...state, messages: { ...state.messages, [action.channelId]: next }, lastMessageId };
    }
    case "message/upsert": {
      const m = action.message;
      const entry = state.messages[m.channel_id] ?? emptyMessages;
      return {
        ...state,
        messages: { ...state.messages, [m.channel_id]: mergeMessages(entry, [m]) },
        lastMessageId: { ...state.lastMessageId, [m.channel_id]: maxId(state.lastMessageId[m.channel_id], m.id) },
        lastReadId: { ...state.lastReadId, [m.channel_id]: maxId(state.lastReadId[m.channel_id], m.id) },
      };
    }
    case "members/loaded": {
      const byUser: Record<string, Member> = { ...(state.members[action.serverId] ?? {}) };
      const users = { ...state.users };
      for (const m of action.members) {
        byUser[m.user.id] = m;
        users[m.user.id] = m.user;
      }
      return { ...state, members: { ...state.members, [action.serverId]: byUser }, users };
    }
    case "presences/loaded": {
      if (action.presences.length === 0) return state;
      const presences = { ...state.presences };
      for (const p of action.presences) presences[p.user_id] = p;
      return { ...state, presences };
    }
    case "channel/open":
      return state.activeChannelId === action.channelId ? state : { ...state, activeChannelId: action.channelId };
    case "channel/read": {
      const id = action.messageId ?? state.lastMessageId[action.channelId];
      if (!id || state.lastReadId[action.channelId] === id) return state;
      return { ...state, lastReadId: { ...state.lastReadId, [action.channelId]: maxId(state.lastReadId[action.channelId], id) } };
    }
    case "typing/prune": {
      let changed = false;
      const typing: State["typing"] = {};
      for (const [ch, users] of Object.entries(state.typing)) {
        const live: Record<string, number> = {};
        for (const [u, until] of Object.entries(users)) {
          if (until > action.now) live[u] = until;
          else changed = true;
        }
        if (Object.keys(live).length) typing[ch] = live;
        else if (Object.keys(users).length) changed = true;
      }
      return changed ? { ...state, typing } : state;
    }
    case "reset":
      return initialState;
  }
}

// ---- selectors ----

/** Whether a channel has messages the user has not seen. */
export function isUnread(state: State, channelId: string): boolean {
  const last = state.lastMessageId[channelId];
  if (!last) return false;
  const read = state.lastReadId[channelId];
  return !read || read < last;
}

/** Users typing in a channel now (their ids), excluding the signed-in user. */
export function typingUsers(state: State, channelId: string, now = Date.now()): string[] {
  const ch = state.typing[channelId];
  if (!ch) return [];
  return Object.entries(ch).filter(([, until]) => until > now).map(([u]) => u);
}

/** The channels of a server in display order: top-level first, then each category with its children. */
export function channelTree(state: State, serverId: string): { category: Channel | null; channels: Channel[] }[] {
  const all = Object.values(state.channels).filter((c) => c.server_id === serverId);
  const byPos = (a: Channel, b: Channel) => a.position - b.position || (a.id < b.id ? -1 : 1);
  const categories = all.filter((c) => c.kind === "category").sort(byPos);
  const catIds = new Set(categories.map((c) => c.id));
  const loose = all.filter((c) => c.kind !== "category" && (!c.parent_id || !catIds.has(c.parent_id))).sort(byPos);
  const groups: { category: Channel | null; channels: Channel[] }[] = [{ category: null, channels: loose }];
  for (const cat of categories) {
    groups.push({ category: cat, channels: all.filter((c) => c.kind !== "category" && c.parent_id === cat.id).sort(byPos) });
  }
  return groups;
}

/** Who is in a voice channel, earliest first. */
export function voiceMembers(state: State, channelId: string): VoiceState[] {
  return Object.values(state.voiceStates)
    .filter((v) => v.channel_id === channelId)
    .sort((a, b) => (a.joined_at < b.joined_at ? -1 : a.joined_at > b.joined_at ? 1 : a.user_id < b.user_id ? -1 : 1));
}

/** Whether a user is speaking in a voice channel now. */
export function isSpeaking(state: State, userId: string, channelId: string): boolean {
  return state.speaking[userId] === channelId;
}

/** Roles of a server, most senior first. */
export function sortedRoles(entry: ServerEntry): Role[] {
  return Object.values(entry.roles).sort((a, b) => b.position - a.position);
}

/** The name to show for a member: nickname, else username. */
export function displayName(member: Member | undefined, user?: User): string {
  return member?.nickname || member?.user.username || user?.username || "unknown user";
}

export type Listener = () => void;

/** Holds the state; React reads it with useSyncExternalStore(store.subscribe, store.getState). */
export class Store {
  private state: State = initialState;
  private listeners = new Set<Listener>();
  private pruneTimer: ReturnType<typeof setInterval> | null = null;

  getState = (): State => this.state;

  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  dispatch(action: Action): void {
    const next = reduce(this.state, action);
    if (next === this.state) return;
    this.state = next;
    for (const l of this.listeners) l();
  }

  /** Applies a gateway dispatch. */
  apply(event: Dispatch): void {
    this.dispatch({ type: "dispatch", event });
  }

  /** Expires typing indicators once a second. */
  startTypingClock(): void {
    if (this.pruneTimer) return;
    this.pruneTimer = setInterval(() => this.dispatch({ type: "typing/prune", now: Date.now() }), 1000);
  }

  stopTypingClock(): void {
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = null;
  }
}
