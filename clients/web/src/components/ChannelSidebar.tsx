/** The server's name and menu, its channels grouped by category, and the user panel. */
import { useEffect, useRef, useState } from "react";
import { channelTree, describeError, isSpeaking, isUnread, voiceMembers, type Channel, type ServerEntry, type State, type Status } from "@together/core";
import { channelPath, linkHandler, navigate } from "../router.ts";
import { together } from "../sdk.ts";
import type { Perms } from "../perms.ts";
import type { Modal } from "./Shell.tsx";
import { Confirm } from "./Dialog.tsx";
import { VoicePanel } from "./VoicePanel.tsx";
import { VoiceFlags, voiceLabel } from "./VoiceChannelView.tsx";

export function ChannelSidebar({ state, entry, activeChannelId, perms, openModal }: {
  state: State;
  entry: ServerEntry | undefined;
  activeChannelId: string | null;
  perms: Perms;
  openModal: (m: Modal) => void;
}) {
  const [menu, setMenu] = useState(false);
  const [leaving, setLeaving] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const menuRef = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (!menu) return;
    const first = menuRef.current?.querySelector<HTMLElement>("[role=menuitem]");
    first?.focus();
    const close = (e: MouseEvent) => {
      if (!menuRef.current?.parentElement?.contains(e.target as Node)) setMenu(false);
    };
    document.addEventListener("mousedown", close);
    return () => document.removeEventListener("mousedown", close);
  }, [menu]);

  const canManageChannels = perms.can("MANAGE_CHANNELS");
  const canManageServer = perms.can("MANAGE_SERVER") || perms.can("MANAGE_ROLES") || perms.can("KICK_MEMBERS") || perms.can("BAN_MEMBERS");
  const canInvite = perms.can("CREATE_INVITE");

  function pick(m: Modal) {
    setMenu(false);
    openModal(m);
  }

  function menuKeys(e: React.KeyboardEvent) {
    const items = [...(menuRef.current?.querySelectorAll<HTMLElement>("[role=menuitem]") ?? [])];
    const i = items.indexOf(document.activeElement as HTMLElement);
    if (e.key === "ArrowDown") items[(i + 1) % items.length]?.focus();
    else if (e.key === "ArrowUp") items[(i - 1 + items.length) % items.length]?.focus();
    else if (e.key === "Escape") setMenu(false);
    else return;
    e.preventDefault();
  }

  return (
    <div className="sidebar">
      {entry ? (
        <>
          <div className="server-header">
            <button className="server-name" aria-haspopup="menu" aria-expanded={menu} onClick={() => setMenu((v) => !v)}>
              <span>{entry.server.name}</span>
              <span aria-hidden="true">{menu ? "✕" : "⌄"}</span>
            </button>
            {menu && (
              <div className="menu" role="menu" ref={menuRef} onKeyDown={menuKeys} aria-label="Server menu">
                {canInvite && <button role="menuitem" onClick={() => pick({ kind: "invite" })}>Invite people</button>}
                {canManageServer && <button role="menuitem" onClick={() => pick({ kind: "server-settings" })}>Server settings</button>}
                {canManageChannels && <button role="menuitem" onClick={() => pick({ kind: "create-channel", category: false })}>Create channel</button>}
                {canManageChannels && <button role="menuitem" onClick={() => pick({ kind: "create-channel", category: true })}>Create category</button>}
                {!perms.isOwner && <button role="menuitem" className="danger-text" onClick={() => { setMenu(false); setLeaving(true); }}>Leave server</button>}
              </div>
            )}
          </div>
          <div className="channel-scroll">
            {channelTree(state, entry.server.id).map((group) => (
              <section key={group.category?.id ?? "top"} className="channel-group" aria-label={group.category ? group.category.name : "Channels"}>
                {group.category && (
                  <div className="category">
                    <h3>{group.category.name}</h3>
                    {canManageChannels && (
                      <span className="category-actions">
                        <button className="icon small" aria-label={`Create channel in ${group.category.name}`} title="Create channel"
                          onClick={() => openModal({ kind: "create-channel", category: false, parentId: group.category?.id })}>+</button>
                        <button className="icon small" aria-label={`Edit category ${group.category.name}`} title="Edit category"
                          onClick={() => openModal({ kind: "channel-settings", channelId: group.category!.id })}>⚙</button>
                      </span>
                    )}
                  </div>
                )}
                <ul className="channel-list">
                  {group.channels.map((c) => (
                    <ChannelLink key={c.id} channel={c} active={c.id === activeChannelId} unread={isUnread(state, c.id)}
                      onSettings={canManageChannels ? () => openModal({ kind: "channel-settings", channelId: c.id }) : undefined}
                      voice={c.kind === "voice" ? <VoiceMembers state={state} entry={entry} channel={c} /> : null} />
                  ))}
                </ul>
              </section>
            ))}
          </div>
        </>
      ) : (
        <div className="server-header"><span className="server-name static">Together</span></div>
      )}
      {error && <p className="error small" role="alert">{error}</p>}
      <VoicePanel state={state} />
      <UserPanel state={state} onKey={() => openModal({ kind: "identity-key" })} />
      {leaving && entry && (
        <Confirm
          title={`Leave ${entry.server.name}?`}
          text="You will need a new invite to come back."
          action="Leave server"
          onClose={() => setLeaving(false)}
          onConfirm={async () => {
            try {
              await together.rest.removeMember(entry.server.id, "@me");
              navigate("/channels");
            } catch (e) {
              setError(describeError(e));
            }
          }}
        />
      )}
    </div>
  );
}

/** Who is in a voice channel, under its name in the list, with speaking rings. */
function VoiceMembers({ state, entry, channel }: { state: State; entry: ServerEntry; channel: Channel }) {
  const members = voiceMembers(state, channel.id);
  if (!members.length) return null;
  return (
    <ul className="voice-members" aria-label={`In voice channel ${channel.name}`}>
      {members.map((v) => {
        const label = voiceLabel(state, entry, v);
        return (
          <li key={v.user_id} className={isSpeaking(state, v.user_id, channel.id) ? "speaking" : undefined} aria-label={label}>
            <span className="avatar" aria-hidden="true">{[...label][0]?.toUpperCase()}</span>
            <span className="name" aria-hidden="true">{label.split(",")[0]}</span>
            <VoiceFlags v={v} />
          </li>
        );
      })}
    </ul>
  );
}

function ChannelLink({ channel, active, unread, onSettings, voice }: { channel: Channel; active: boolean; unread: boolean; onSettings?: () => void; voice?: React.ReactNode }) {
  const href = channelPath(channel.server_id, channel.id);
  return (
    <li className={`channel${active ? " active" : ""}${unread && !active ? " unread" : ""}`}>
      <a href={href} onClick={linkHandler(href)} aria-current={active ? "page" : undefined}
        aria-label={`${channel.kind === "voice" ? "voice channel" : "channel"} ${channel.name}${unread && !active ? ", unread" : ""}`}>
        <span className="hash" aria-hidden="true">{channel.kind === "voice" ? "🔊" : "#"}</span>
        <span className="name">{channel.name}</span>
      </a>
      {onSettings && (
        <button className="icon small gear" aria-label={`Edit channel ${channel.name}`} title="Edit channel" onClick={onSettings}>⚙</button>
      )}
      {voice}
    </li>
  );
}

const STATUSES: { value: Status; label: string }[] = [
  { value: "online", label: "Online" },
  { value: "away", label: "Away" },
  { value: "dnd", label: "Do not disturb" },
  { value: "invisible", label: "Invisible" },
];

function UserPanel({ state, onKey }: { state: State; onKey: () => void }) {
  const me = state.me;
  if (!me) return null;
  return (
    <div className="user-panel">
      <span className={`avatar status-${me.status}`} aria-hidden="true">{[...me.username][0]?.toUpperCase()}</span>
      <div className="who">
        <strong>{me.username}</strong>
        <span className="muted small">{me.tag}</span>
      </div>
      <label className="visually-hidden" htmlFor="status-select">Status</label>
      <select id="status-select" className="status-select" value={me.status}
        onChange={(e) => together.rest.updateMe({ status: e.target.value }).catch(() => undefined)}>
        {STATUSES.map((s) => <option key={s.value} value={s.value}>{s.label}</option>)}
      </select>
      <button className="icon" aria-label="Identity key" title="Your identity key" onClick={onKey}>🔑</button>
      <button className="icon" aria-label="Sign out" title="Sign out" onClick={() => together.logout().then(() => navigate("/login"))}>⎋</button>
    </div>
  );
}
