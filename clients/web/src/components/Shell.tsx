/**
 * The signed-in layout, Discord-shaped: server rail | channel list |
 * messages | members. On narrow screens the rail and channel list become
 * a drawer and the member list a toggle.
 */
import { useEffect, useMemo, useRef, useState } from "react";
import { channelTree } from "@together/core";
import { channelPath, navigate } from "../router.ts";
import { together, useGatewayStatus, useStoreState } from "../sdk.ts";
import { usePerms } from "../perms.ts";
import { ServerRail } from "./ServerRail.tsx";
import { ChannelSidebar } from "./ChannelSidebar.tsx";
import { MessagePane } from "./MessagePane.tsx";
import { MemberList } from "./MemberList.tsx";
import { SearchPanel } from "./SearchPanel.tsx";
import { CreateServerDialog } from "./CreateServerDialog.tsx";
import { CreateChannelDialog } from "./CreateChannelDialog.tsx";
import { InviteDialog } from "./InviteDialog.tsx";
import { ServerSettings } from "./ServerSettings.tsx";
import { ChannelSettings } from "./ChannelSettings.tsx";
import { VoiceChannelView } from "./VoiceChannelView.tsx";
import { VoiceAudio } from "./VoiceAudio.tsx";
import { IdentityKeyDialog } from "./IdentityKeyDialog.tsx";
import { JoinServerDialog } from "./JoinServerDialog.tsx";

export type Modal =
  | { kind: "create-server" }
  | { kind: "create-channel"; category: boolean; parentId?: string | null }
  | { kind: "invite" }
  | { kind: "server-settings" }
  | { kind: "channel-settings"; channelId: string }
  | { kind: "identity-key" }
  | { kind: "join-server" }
  | null;

export function Shell({ serverId, channelId }: { serverId: string | null; channelId: string | null }) {
  const state = useStoreState();
  const status = useGatewayStatus();
  const [modal, setModal] = useState<Modal>(null);
  const [drawer, setDrawer] = useState(false);
  const [showMembers, setShowMembers] = useState(() => window.matchMedia?.("(min-width: 1100px)").matches ?? true);
  const [search, setSearch] = useState<string | null>(null);
  const ready = state.me !== null;
  const entry = serverId ? state.servers[serverId] : undefined;
  const channel = channelId ? state.channels[channelId] : undefined;
  const perms = usePerms(state, serverId, channelId);

  const firstChannel = useMemo(() => {
    if (!serverId) return null;
    for (const g of channelTree(state, serverId)) {
      const c = g.channels.find((c) => c.kind === "text");
      if (c) return c.id;
    }
    return null;
  }, [state, serverId]);

  // When the wait for a missing server or channel began: other updates of
  // the store re-run the effect below, and must not restart the wait.
  const waiting = useRef<{ key: string; since: number } | null>(null);
  const wait = (key: string, ms: number, then: () => void) => {
    const now = Date.now();
    if (waiting.current?.key !== key) waiting.current = { key, since: now };
    const t = setTimeout(then, Math.max(0, waiting.current.since + ms - now));
    return () => clearTimeout(t);
  };

  // Pick a server and channel when the URL names none, or one that is gone.
  useEffect(() => {
    if (!ready) return;
    if (!serverId) {
      waiting.current = null;
      const first = Object.values(state.servers).sort((a, b) => (a.server.created_at < b.server.created_at ? -1 : 1))[0];
      if (first) navigate(channelPath(first.server.id), true);
      return;
    }
    if (!entry) {
      // Just created or joined: SERVER_CREATE may still be on its way. Give it a moment.
      return wait(`server ${serverId}`, 3000, () => {
        if (!together.store.getState().servers[serverId]) navigate("/channels", true);
      });
    }
    if (!channelId && firstChannel) navigate(channelPath(serverId, firstChannel), true);
    if (channelId && !channel) {
      // Just created (CHANNEL_CREATE on its way), or no longer visible: wait a moment, then move on.
      return wait(`channel ${channelId}`, 1500, () => {
        const s = together.store.getState();
        if (!s.channels[channelId]) navigate(firstChannel ? channelPath(serverId, firstChannel) : channelPath(serverId), true);
      });
    }
    waiting.current = null;
  }, [ready, serverId, channelId, entry, channel, firstChannel, state.servers]);

  useEffect(() => {
    together.store.dispatch({ type: "channel/open", channelId: channel ? channel.id : null });
    setDrawer(false);
  }, [channel?.id]);

  // The member list covers the messages on a phone: close it when the window gets narrow.
  useEffect(() => {
    const narrow = window.matchMedia?.("(max-width: 760px)");
    if (!narrow) return;
    const onChange = () => {
      if (narrow.matches) setShowMembers(false);
    };
    narrow.addEventListener("change", onChange);
    return () => narrow.removeEventListener("change", onChange);
  }, []);

  // Escape closes the drawer on narrow screens.
  useEffect(() => {
    if (!drawer) return;
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") setDrawer(false);
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [drawer]);

  useEffect(() => {
    if (serverId && entry) together.loadMembers(serverId).catch(() => undefined);
    setSearch(null);
  }, [serverId, !!entry]);

  useEffect(() => {
    document.title = channel && entry ? `#${channel.name} · ${entry.server.name} · Together` : "Together";
  }, [channel?.name, entry?.server.name]);

  return (
    <div className={`shell${drawer ? " drawer-open" : ""}${showMembers && entry ? " with-members" : ""}`}>
      <a className="skip-link" href="#composer-input">Skip to message box</a>
      <nav className="rail-and-sidebar" aria-label="Servers and channels">
        <ServerRail state={state} activeServerId={serverId} onCreate={() => setModal({ kind: "create-server" })} onJoin={() => setModal({ kind: "join-server" })} />
        <ChannelSidebar
          state={state}
          entry={entry}
          activeChannelId={channelId}
          perms={perms}
          openModal={setModal}
        />
      </nav>
      <button className="drawer-scrim" aria-label="Close menu" tabIndex={drawer ? 0 : -1} onClick={() => setDrawer(false)} />
      <main className="main" aria-label="Messages">
        {status !== "ready" && ready && (
          <div className="banner" role="status">{status === "closed" ? "Disconnected from the node." : "Reconnecting to the node…"}</div>
        )}
        {!ready ? (
          <div className="empty" role="status"><p>Connecting to the node…</p></div>
        ) : !entry ? (
          <div className="empty">
            <button className="icon menu-button" aria-label="Open menu" onClick={() => setDrawer(true)}>☰</button>
            <h1>{serverId ? "Opening server…" : "No servers yet"}</h1>
            <p className="muted">Create a server for your friends or community, or open an invite link to join one.</p>
            <div className="row">
              <button className="primary" onClick={() => setModal({ kind: "create-server" })}>Create a server</button>
              <button onClick={() => setModal({ kind: "join-server" })}>Join a server</button>
            </div>
          </div>
        ) : channel && channel.kind === "voice" ? (
          <VoiceChannelView state={state} entry={entry} channel={channel} perms={perms} onMenu={() => setDrawer(true)} />
        ) : channel && channel.kind === "text" ? (
          <MessagePane
            key={channel.id}
            state={state}
            entry={entry}
            channel={channel}
            perms={perms}
            onMenu={() => setDrawer(true)}
            onToggleMembers={() => setShowMembers((v) => !v)}
            membersShown={showMembers}
            onSearch={(q) => setSearch(q)}
          />
        ) : (
          <div className="empty">
            <button className="icon menu-button" aria-label="Open menu" onClick={() => setDrawer(true)}>☰</button>
            <h1>No channel to show</h1>
            <p className="muted">This server has no text channel you can see.</p>
          </div>
        )}
      </main>
      {entry && search !== null && (
        <SearchPanel state={state} serverId={entry.server.id} initialQuery={search} onClose={() => setSearch(null)} />
      )}
      {entry && showMembers && search === null && <MemberList state={state} entry={entry} />}

      <VoiceAudio />
      {modal?.kind === "create-server" && <CreateServerDialog onClose={() => setModal(null)} />}
      {modal?.kind === "identity-key" && <IdentityKeyDialog onClose={() => setModal(null)} />}
      {modal?.kind === "join-server" && <JoinServerDialog onClose={() => setModal(null)} />}
      {modal?.kind === "create-channel" && entry && (
        <CreateChannelDialog state={state} serverId={entry.server.id} category={modal.category} parentId={modal.parentId ?? null} onClose={() => setModal(null)} />
      )}
      {modal?.kind === "invite" && entry && <InviteDialog serverId={entry.server.id} channelId={channel?.id ?? null} onClose={() => setModal(null)} />}
      {modal?.kind === "server-settings" && entry && <ServerSettings state={state} entry={entry} perms={perms} onClose={() => setModal(null)} />}
      {modal?.kind === "channel-settings" && entry && state.channels[modal.channelId] && (
        <ChannelSettings state={state} entry={entry} channel={state.channels[modal.channelId]} onClose={() => setModal(null)} />
      )}
    </div>
  );
}
