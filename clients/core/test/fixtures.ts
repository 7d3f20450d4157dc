import type { Channel, CurrentUser, Member, Message, ReadyServer, Role, Server, User } from "../src/index.ts";

export const ME: CurrentUser = {
  id: "00000000-0000-8000-8000-00000000000a", username: "alice", tag: "alice#0000", email: null, avatar_url: null,
  status: "online", custom_status: null, public_key: "aa", created_at: "2026-01-01T00:00:00Z",
};
export const BOB: User = { id: "00000000-0000-8000-8000-00000000000b", username: "bob", tag: "bob#0000", avatar_url: null, public_key: "bb" };
export const ALICE: User = { id: ME.id, username: "alice", tag: "alice#0000", avatar_url: null, public_key: "aa" };

export const SERVER_ID = "10000000-0000-7000-8000-000000000001";
export const server: Server = { id: SERVER_ID, name: "Home", owner_id: ME.id, icon_url: null, description: null, created_at: "2026-01-01T00:00:00Z" };

export function channel(id: string, extra: Partial<Channel> = {}): Channel {
  return {
    id, server_id: SERVER_ID, name: `ch-${id.slice(-2)}`, kind: "text", parent_id: null, topic: null, position: 0,
    permission_overrides: [], created_at: "2026-01-01T00:00:00Z", ...extra,
  };
}

export const everyone: Role = {
  id: SERVER_ID, server_id: SERVER_ID, name: "@everyone", permissions: "1", color: null, hoist: false, mentionable: false, position: 0,
};

export function member(user: User, roles: string[] = []): Member {
  return { server_id: SERVER_ID, user, nickname: null, roles, joined_at: "2026-01-01T00:00:00Z" };
}

export const GENERAL = "20000000-0000-7000-8000-000000000001";

export function readyServer(): ReadyServer {
  return {
    server, channels: [channel(GENERAL, { name: "general" })], roles: [everyone], member: member(ALICE),
    member_count: 2, presences: [{ user_id: BOB.id, status: "online", custom_status: null }], voice_states: [],
  };
}

let n = 0;
/** A message with a fresh, increasing id (like UUIDv7). */
export function message(author: User, content: string, channelId = GENERAL): Message {
  n += 1;
  const id = `0190a000-0000-7000-8000-${n.toString().padStart(12, "0")}`;
  return {
    id, channel_id: channelId, server_id: SERVER_ID, author, content, reply_to: null, attachments: [], reactions: [],
    edited_at: null, created_at: new Date(1_700_000_000_000 + n * 1000).toISOString(),
  };
}
