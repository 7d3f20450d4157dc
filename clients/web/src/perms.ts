/** The signed-in user's permissions, derived from the store, to show only usable controls. */
import { useMemo } from "react";
import { basePermissions, channelPermissions, has, Permission, type PermissionName, type State } from "@together/core";

export interface Perms {
  server: bigint;
  channel: bigint;
  can(name: PermissionName, scope?: "server" | "channel"): boolean;
  isOwner: boolean;
}

export function computePerms(state: State, serverId: string | null, channelId: string | null): Perms {
  const entry = serverId ? state.servers[serverId] : undefined;
  const channel = channelId ? state.channels[channelId] : undefined;
  const server = entry ? basePermissions(entry.server, entry.roles, entry.member) : 0n;
  const inChannel = entry && channel ? channelPermissions(entry.server, entry.roles, entry.member, channel) : 0n;
  return {
    server,
    channel: inChannel,
    isOwner: !!entry && !!state.me && entry.server.owner_id === state.me.id,
    can(name, scope = "server") {
      return has(scope === "server" ? server : inChannel, Permission[name]);
    },
  };
}

export function usePerms(state: State, serverId: string | null, channelId: string | null): Perms {
  const entry = serverId ? state.servers[serverId] : undefined;
  const channel = channelId ? state.channels[channelId] : undefined;
  // eslint-disable-next-line react-hooks/exhaustive-deps
  return useMemo(() => computePerms(state, serverId, channelId), [entry, channel, state.me, serverId, channelId]);
}
