/** Channel settings: name, topic, delete; permission overrides per role or member (allow / inherit / deny). */
import { useState, type FormEvent } from "react";
import {
  CHANNEL_SCOPED, Permission, PERMISSION_LABELS, bits, describeError, displayName, sortedRoles,
  type Channel, type PermissionName, type ServerEntry, type State,
} from "@together/core";
import { together } from "../sdk.ts";
import { Confirm, Dialog } from "./Dialog.tsx";

export function ChannelSettings({ state, entry, channel, onClose }: { state: State; entry: ServerEntry; channel: Channel; onClose: () => void }) {
  const [tab, setTab] = useState<"overview" | "permissions">("overview");
  return (
    <Dialog title={`${channel.kind === "category" ? "Category" : "Channel"} settings: ${channel.name}`} onClose={onClose} wide>
      <div className="settings">
        <div role="tablist" aria-orientation="vertical" className="tabs">
          <button role="tab" id="ctab-overview" aria-selected={tab === "overview"} aria-controls="cpanel" onClick={() => setTab("overview")}>Overview</button>
          <button role="tab" id="ctab-permissions" aria-selected={tab === "permissions"} aria-controls="cpanel" onClick={() => setTab("permissions")}>Permissions</button>
        </div>
        <div role="tabpanel" id="cpanel" aria-labelledby={`ctab-${tab}`} className="tab-panel">
          {tab === "overview" ? <Overview channel={channel} onClose={onClose} /> : <Overrides state={state} entry={entry} channel={channel} />}
        </div>
      </div>
    </Dialog>
  );
}

function Overview({ channel, onClose }: { channel: Channel; onClose: () => void }) {
  const [name, setName] = useState(channel.name);
  const [topic, setTopic] = useState(channel.topic ?? "");
  const [error, setError] = useState<string | null>(null);
  const [msg, setMsg] = useState<string | null>(null);
  const [deleting, setDeleting] = useState(false);

  async function save(e: FormEvent) {
    e.preventDefault();
    setError(null);
    setMsg(null);
    try {
      await together.rest.updateChannel(channel.id, { name: name.trim(), ...(channel.kind === "text" ? { topic: topic.trim() } : {}) });
      setMsg("Saved.");
    } catch (err) {
      setError(describeError(err));
    }
  }

  return (
    <form className="stack" onSubmit={save}>
      <label>Name<input value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} /></label>
      {channel.kind === "text" && <label>Topic<input value={topic} onChange={(e) => setTopic(e.target.value)} maxLength={1024} /></label>}
      {error && <p className="error" role="alert">{error}</p>}
      {msg && <p className="ok" role="status">{msg}</p>}
      <div className="row">
        <button type="submit" className="primary">Save changes</button>
        <button type="button" className="danger" onClick={() => setDeleting(true)}>Delete {channel.kind === "category" ? "category" : "channel"}</button>
      </div>
      {deleting && (
        <Confirm title={`Delete ${channel.name}?`} text="Its messages are deleted too. This cannot be undone." action="Delete" onClose={() => setDeleting(false)}
          onConfirm={async () => {
            try {
              await together.rest.deleteChannel(channel.id);
              onClose();
            } catch (err) {
              setError(describeError(err));
            }
          }} />
      )}
    </form>
  );
}

type Tri = "allow" | "inherit" | "deny";
const SCOPED = (Object.keys(Permission) as PermissionName[]).filter((p) => (CHANNEL_SCOPED & Permission[p]) !== 0n);

function Overrides({ state, entry, channel }: { state: State; entry: ServerEntry; channel: Channel }) {
  const roles = sortedRoles(entry);
  const members = Object.values(state.members[entry.server.id] ?? {});
  const overrides = channel.permission_overrides ?? [];
  const [target, setTarget] = useState<string>(overrides[0]?.id ?? entry.server.id);
  const [error, setError] = useState<string | null>(null);
  const [msg, setMsg] = useState<string | null>(null);
  const existing = overrides.find((o) => o.id === target);
  const isRole = !!entry.roles[target];
  const [allow, setAllow] = useState(bits(existing?.allow));
  const [deny, setDeny] = useState(bits(existing?.deny));

  function choose(id: string) {
    setTarget(id);
    const o = overrides.find((x) => x.id === id);
    setAllow(bits(o?.allow));
    setDeny(bits(o?.deny));
    setMsg(null);
    setError(null);
  }

  function set(p: PermissionName, v: Tri) {
    const flag = Permission[p];
    setAllow((a) => (v === "allow" ? a | flag : a & ~flag));
    setDeny((d) => (v === "deny" ? d | flag : d & ~flag));
  }

  async function save() {
    setError(null);
    setMsg(null);
    try {
      await together.rest.setChannelOverride(channel.id, target, { type: isRole ? "role" : "member", allow: allow.toString(), deny: deny.toString() });
      setMsg("Permissions saved.");
    } catch (e) {
      setError(describeError(e));
    }
  }

  async function clear() {
    setError(null);
    try {
      await together.rest.deleteChannelOverride(channel.id, target);
      setAllow(0n);
      setDeny(0n);
      setMsg("Override removed.");
    } catch (e) {
      setError(describeError(e));
    }
  }

  const targetName = (id: string) => entry.roles[id]?.name ?? displayName(state.members[entry.server.id]?.[id]);

  return (
    <div className="stack">
      <label>
        Override for
        <select value={target} onChange={(e) => choose(e.target.value)}>
          <optgroup label="Roles">
            {roles.map((r) => <option key={r.id} value={r.id}>{r.name}{overrides.some((o) => o.id === r.id) ? " (set)" : ""}</option>)}
          </optgroup>
          <optgroup label="Members">
            {members.map((m) => <option key={m.user.id} value={m.user.id}>{displayName(m)}{overrides.some((o) => o.id === m.user.id) ? " (set)" : ""}</option>)}
          </optgroup>
        </select>
      </label>
      <table className="perm-table">
        <caption className="visually-hidden">Permissions of {targetName(target)} in {channel.name}</caption>
        <thead><tr><th scope="col">Permission</th><th scope="col">Deny</th><th scope="col">Inherit</th><th scope="col">Allow</th></tr></thead>
        <tbody>
          {SCOPED.map((p) => {
            const flag = Permission[p];
            const v: Tri = (allow & flag) !== 0n ? "allow" : (deny & flag) !== 0n ? "deny" : "inherit";
            return (
              <tr key={p}>
                <th scope="row">{PERMISSION_LABELS[p]}</th>
                {(["deny", "inherit", "allow"] as Tri[]).map((t) => (
                  <td key={t} className={`tri ${t}`}>
                    <input type="radio" name={`perm-${p}`} checked={v === t} onChange={() => set(p, t)} aria-label={`${PERMISSION_LABELS[p]}: ${t}`} />
                  </td>
                ))}
              </tr>
            );
          })}
        </tbody>
      </table>
      {error && <p className="error" role="alert">{error}</p>}
      {msg && <p className="ok" role="status">{msg}</p>}
      <div className="row">
        <button className="primary" onClick={save}>Save permissions</button>
        {existing && <button className="danger" onClick={clear}>Remove override</button>}
      </div>
    </div>
  );
}
