/**
 * Permission bits and their computation, as protocol/src/permissions.rs
 * defines them. The node is the authority; clients use this only to hide
 * controls a user cannot use. Bits travel as decimal strings.
 */
import type { Channel, Member, Role, Server } from "./types.ts";

export const Permission = {
  VIEW_CHANNEL: 1n << 0n,
  SEND_MESSAGES: 1n << 1n,
  MANAGE_MESSAGES: 1n << 2n,
  ATTACH_FILES: 1n << 3n,
  ADD_REACTIONS: 1n << 4n,
  CONNECT_VOICE: 1n << 5n,
  SPEAK: 1n << 6n,
  MUTE_MEMBERS: 1n << 7n,
  KICK_MEMBERS: 1n << 8n,
  BAN_MEMBERS: 1n << 9n,
  MANAGE_CHANNELS: 1n << 10n,
  MANAGE_ROLES: 1n << 11n,
  MANAGE_SERVER: 1n << 12n,
  ADMINISTRATOR: 1n << 13n,
  CREATE_INVITE: 1n << 14n,
  MANAGE_NICKNAMES: 1n << 15n,
  CHANGE_NICKNAME: 1n << 16n,
  READ_MESSAGE_HISTORY: 1n << 17n,
  DEAFEN_MEMBERS: 1n << 18n,
  MOVE_MEMBERS: 1n << 19n,
  MENTION_EVERYONE: 1n << 20n,
} as const;

export type PermissionName = keyof typeof Permission;

export const ALL_PERMISSIONS = Object.values(Permission).reduce((a, b) => a | b, 0n);

/** Human labels, for settings screens. */
export const PERMISSION_LABELS: Record<PermissionName, string> = {
  VIEW_CHANNEL: "View channels",
  SEND_MESSAGES: "Send messages",
  MANAGE_MESSAGES: "Manage messages",
  ATTACH_FILES: "Attach files",
  ADD_REACTIONS: "Add reactions",
  CONNECT_VOICE: "Connect to voice",
  SPEAK: "Speak",
  MUTE_MEMBERS: "Mute members",
  KICK_MEMBERS: "Kick members",
  BAN_MEMBERS: "Ban members",
  MANAGE_CHANNELS: "Manage channels",
  MANAGE_ROLES: "Manage roles",
  MANAGE_SERVER: "Manage server",
  ADMINISTRATOR: "Administrator",
  CREATE_INVITE: "Create invites",
  MANAGE_NICKNAMES: "Manage nicknames",
  CHANGE_NICKNAME: "Change nickname",
  READ_MESSAGE_HISTORY: "Read message history",
  DEAFEN_MEMBERS: "Deafen members",
  MOVE_MEMBERS: "Move members",
  MENTION_EVERYONE: "Mention everyone",
};

/** Bits that may appear in channel overrides. */
export const CHANNEL_SCOPED: bigint = [
  "VIEW_CHANNEL", "SEND_MESSAGES", "MANAGE_MESSAGES", "ATTACH_FILES", "ADD_REACTIONS", "CONNECT_VOICE", "SPEAK",
  "MUTE_MEMBERS", "DEAFEN_MEMBERS", "MOVE_MEMBERS", "MANAGE_CHANNELS", "MANAGE_ROLES", "CREATE_INVITE",
  "READ_MESSAGE_HISTORY", "MENTION_EVERYONE",
].reduce((acc, n) => acc | Permission[n as PermissionName], 0n);

export function bits(value: string | number | bigint | null | undefined): bigint {
  if (value === null || value === undefined || value === "") return 0n;
  try {
    return BigInt(value);
  } catch {
    return 0n;
  }
}

export function has(perms: bigint, flag: bigint): boolean {
  return (perms & flag) === flag;
}

/** Server-wide permissions of a member. */
export function basePermissions(server: Server, roles: Record<string, Role>, member: Member): bigint {
  if (server.owner_id === member.user.id) return ALL_PERMISSIONS;
  let perms = bits(roles[server.id]?.permissions);
  for (const id of member.roles) perms |= bits(roles[id]?.permissions);
  return has(perms, Permission.ADMINISTRATOR) ? ALL_PERMISSIONS : perms;
}

/** Permissions of a member in a channel: @everyone override, then role overrides together, then the member's own. */
export function channelPermissions(server: Server, roles: Record<string, Role>, member: Member, channel: Channel): bigint {
  const base = basePermissions(server, roles, member);
  if (has(base, Permission.ADMINISTRATOR)) return ALL_PERMISSIONS;
  let perms = base;
  const overrides = channel.permission_overrides ?? [];
  const everyone = overrides.find((o) => o.type === "role" && o.id === server.id);
  if (everyone) perms = (perms & ~bits(everyone.deny)) | bits(everyone.allow);
  let allow = 0n;
  let deny = 0n;
  for (const o of overrides) {
    if (o.type === "role" && o.id !== server.id && member.roles.includes(o.id)) {
      allow |= bits(o.allow);
      deny |= bits(o.deny);
    }
  }
  perms = (perms & ~deny) | allow;
  const own = overrides.find((o) => o.type === "member" && o.id === member.user.id);
  if (own) perms = (perms & ~bits(own.deny)) | bits(own.allow);
  if (!has(perms, Permission.VIEW_CHANNEL)) return 0n;
  if (!has(perms, Permission.SEND_MESSAGES)) perms &= ~(Permission.ATTACH_FILES | Permission.MENTION_EVERYONE);
  return perms;
}
