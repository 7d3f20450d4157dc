/** Server settings: overview, roles and their permissions, members (roles, kick, ban), bans, invites. */
import { useEffect, useState, type FormEvent } from "react";
import {
  ALL_PERMISSIONS, Permission, PERMISSION_LABELS, bits, describeError, displayName, sortedRoles,
  type Ban, type Invite, type Member, type PermissionName, type Role, type ServerEntry, type State,
} from "@together/core";
import { navigate } from "../router.ts";
import { together } from "../sdk.ts";
import type { Perms } from "../perms.ts";
import { Confirm, Dialog } from "./Dialog.tsx";
import { inviteLink, useNodePeers } from "./InviteDialog.tsx";

type Tab = "overview" | "roles" | "members" | "bans" | "invites";

export function ServerSettings({ state, entry, perms, onClose }: { state: State; entry: ServerEntry; perms: Perms; onClose: () => void }) {
  const tabs: { id: Tab; label: string; show: boolean }[] = [
    { id: "overview", label: "Overview", show: true },
    { id: "roles", label: "Roles", show: perms.can("MANAGE_ROLES") },
    { id: "members", label: "Members", show: true },
    { id: "bans", label: "Bans", show: perms.can("BAN_MEMBERS") },
    { id: "invites", label: "Invites", show: perms.can("MANAGE_SERVER") || perms.can("CREATE_INVITE") },
  ];
  const [tab, setTab] = useState<Tab>("overview");

  function tabKeys(e: React.KeyboardEvent) {
    const visible = tabs.filter((t) => t.show);
    const i = visible.findIndex((t) => t.id === tab);
    let next = -1;
    if (e.key === "ArrowDown" || e.key === "ArrowRight") next = (i + 1) % visible.length;
    if (e.key === "ArrowUp" || e.key === "ArrowLeft") next = (i - 1 + visible.length) % visible.length;
    if (next < 0) return;
    e.preventDefault();
    setTab(visible[next].id);
    document.getElementById(`tab-${visible[next].id}`)?.focus();
  }

  return (
    <Dialog title={`${entry.server.name} settings`} onClose={onClose} wide>
      <div className="settings">
        <div role="tablist" aria-orientation="vertical" className="tabs" onKeyDown={tabKeys}>
          {tabs.filter((t) => t.show).map((t) => (
            <button key={t.id} id={`tab-${t.id}`} role="tab" aria-selected={tab === t.id} aria-controls={`panel-${t.id}`} tabIndex={tab === t.id ? 0 : -1} onClick={() => setTab(t.id)}>
              {t.label}
            </button>
          ))}
        </div>
        <div role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} className="tab-panel">
          {tab === "overview" && <Overview entry={entry} perms={perms} onClose={onClose} />}
          {tab === "roles" && <Roles entry={entry} />}
          {tab === "members" && <Members state={state} entry={entry} perms={perms} />}
          {tab === "bans" && <Bans entry={entry} />}
          {tab === "invites" && <Invites entry={entry} />}
        </div>
      </div>
    </Dialog>
  );
}

function Overview({ entry, perms, onClose }: { entry: ServerEntry; perms: Perms; onClose: () => void }) {
  const [name, setName] = useState(entry.server.name);
  const [description, setDescription] = useState(entry.server.description ?? "");
  const [msg, setMsg] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [deleting, setDeleting] = useState(false);
  const canEdit = perms.can("MANAGE_SERVER");

  async function save(e: FormEvent) {
    e.preventDefault();
    setError(null);
    setMsg(null);
    try {
      await together.rest.updateServer(entry.server.id, { name: name.trim(), description: description.trim() });
      setMsg("Saved.");
    } catch (err) {
      setError(describeError(err));
    }
  }

  return (
    <form className="stack" onSubmit={save}>
      <label>Server name<input value={name} onChange={(e) => setName(e.target.value)} disabled={!canEdit} required maxLength={100} /></label>
      <label>Description<textarea value={description} onChange={(e) => setDescription(e.target.value)} disabled={!canEdit} maxLength={1024} rows={3} /></label>
      {error && <p className="error" role="alert">{error}</p>}
      {msg && <p className="ok" role="status">{msg}</p>}
      {canEdit && <div className="row"><button className="primary" type="submit">Save changes</button></div>}
      {perms.isOwner && (
        <div className="danger-zone">
          <h3>Delete server</h3>
          <p className="muted">Deletes every channel and message for everyone.</p>
          <button type="button" className="danger" onClick={() => setDeleting(true)}>Delete server</button>
        </div>
      )}
      {deleting && (
        <Confirm title={`Delete ${entry.server.name}?`} text="This cannot be undone." action="Delete server" onClose={() => setDeleting(false)}
          onConfirm={async () => {
            try {
              await together.rest.deleteServer(entry.server.id);
              onClose();
              navigate("/channels");
            } catch (err) {
              setError(describeError(err));
            }
          }} />
      )}
    </form>
  );
}

function colorHex(c: number | null | undefined): string {
  return c === null || c === undefined ? "#99aab5" : `#${c.toString(16).padStart(6, "0")}`;
}

function Roles({ entry }: { entry: ServerEntry }) {
  const roles = sortedRoles(entry);
  const [selected, setSelected] = useState<string>(roles.find((r) => r.id !== entry.server.id)?.id ?? entry.server.id);
  const [error, setError] = useState<string | null>(null);
  const role = entry.roles[selected] ?? entry.roles[entry.server.id];

  async function create() {
    setError(null);
    try {
      const r = await together.rest.createRole(entry.server.id, { name: "new role" });
      setSelected(r.id);
    } catch (e) {
      setError(describeError(e));
    }
  }

  return (
    <div className="split">
      <div className="split-list">
        <button className="primary" onClick={create}>Create role</button>
        <ul aria-label="Roles">
          {roles.map((r) => (
            <li key={r.id}>
              <button className={r.id === selected ? "selected" : ""} aria-current={r.id === selected} onClick={() => setSelected(r.id)}>
                <span className="role-dot" style={{ background: colorHex(r.color) }} aria-hidden="true" /> {r.name}
              </button>
            </li>
          ))}
        </ul>
        {error && <p className="error" role="alert">{error}</p>}
      </div>
      {role && <RoleEditor key={role.id} role={role} everyone={role.id === entry.server.id} onDeleted={() => setSelected(entry.server.id)} />}
    </div>
  );
}

function RoleEditor({ role, everyone, onDeleted }: { role: Role; everyone: boolean; onDeleted: () => void }) {
  const [name, setName] = useState(role.name);
  const [color, setColor] = useState(colorHex(role.color));
  const [hoist, setHoist] = useState(role.hoist);
  const [permissions, setPermissions] = useState(bits(role.permissions));
  const [error, setError] = useState<string | null>(null);
  const [msg, setMsg] = useState<string | null>(null);

  async function save(e: FormEvent) {
    e.preventDefault();
    setError(null);
    setMsg(null);
    try {
      await together.rest.updateRole(role.id, {
        ...(everyone ? {} : { name: name.trim(), color: parseInt(color.slice(1), 16), hoist }),
        permissions: (permissions & ALL_PERMISSIONS).toString(),
      });
      setMsg("Role saved.");
    } catch (err) {
      setError(describeError(err));
    }
  }

  async function remove() {
    setError(null);
    try {
      await together.rest.deleteRole(role.id);
      onDeleted();
    } catch (err) {
      setError(describeError(err));
    }
  }

  return (
    <form className="stack split-detail" onSubmit={save} aria-label={`Edit role ${role.name}`}>
      {!everyone && (
        <>
          <label>Role name<input value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} /></label>
          <div className="row">
            <label className="inline">Colour <input type="color" value={color} onChange={(e) => setColor(e.target.value)} /></label>
            <label className="inline"><input type="checkbox" checked={hoist} onChange={(e) => setHoist(e.target.checked)} /> Show separately in the member list</label>
          </div>
        </>
      )}
      <fieldset className="perm-grid">
        <legend>Permissions{everyone ? " for everyone" : ""}</legend>
        {(Object.keys(Permission) as PermissionName[]).map((p) => (
          <label key={p} className="inline">
            <input type="checkbox" checked={(permissions & Permission[p]) !== 0n}
              onChange={(e) => setPermissions((cur) => (e.target.checked ? cur | Permission[p] : cur & ~Permission[p]))} />
            {PERMISSION_LABELS[p]}
          </label>
        ))}
      </fieldset>
      {error && <p className="error" role="alert">{error}</p>}
      {msg && <p className="ok" role="status">{msg}</p>}
      <div className="row">
        <button type="submit" className="primary">Save role</button>
        {!everyone && <button type="button" className="danger" onClick={remove}>Delete role</button>}
      </div>
    </form>
  );
}

function Members({ state, entry, perms }: { state: State; entry: ServerEntry; perms: Perms }) {
  const members = Object.values(state.members[entry.server.id] ?? {}).sort((a, b) => displayName(a).localeCompare(displayName(b)));
  const roles = sortedRoles(entry).filter((r) => r.id !== entry.server.id);
  const [error, setError] = useState<string | null>(null);
  const [confirm, setConfirm] = useState<{ member: Member; action: "kick" | "ban" } | null>(null);
  const [reason, setReason] = useState("");

  async function toggleRole(m: Member, roleId: string, on: boolean) {
    setError(null);
    const serverId = entry.server.id;
    const next = on ? [...m.roles, roleId] : m.roles.filter((r) => r !== roleId);
    // Show the change at once; the node's answer (or SERVER_MEMBER_UPDATE) confirms it.
    together.store.dispatch({ type: "members/loaded", serverId, members: [{ ...m, roles: next }] });
    try {
      const updated = await together.rest.setMemberRoles(serverId, m.user.id, next);
      together.store.dispatch({ type: "members/loaded", serverId, members: [updated] });
    } catch (e) {
      together.store.dispatch({ type: "members/loaded", serverId, members: [m] });
      setError(describeError(e));
    }
  }

  return (
    <div className="stack">
      {error && <p className="error" role="alert">{error}</p>}
      <ul className="member-rows" aria-label="Members">
        {members.map((m) => {
          const isOwner = m.user.id === entry.server.owner_id;
          const isMe = m.user.id === state.me?.id;
          return (
            <li key={m.user.id} className="member-row">
              <div>
                <strong>{displayName(m)}</strong> <span className="muted small">{m.user.tag}</span>
                {isOwner && <span className="muted small"> · owner</span>}
              </div>
              {perms.can("MANAGE_ROLES") && roles.length > 0 && (
                <fieldset className="role-checks">
                  <legend className="visually-hidden">Roles of {displayName(m)}</legend>
                  {roles.map((r) => (
                    <label key={r.id} className="inline small">
                      <input type="checkbox" checked={m.roles.includes(r.id)} onChange={(e) => toggleRole(m, r.id, e.target.checked)} />
                      {r.name}
                    </label>
                  ))}
                </fieldset>
              )}
              {!isOwner && !isMe && (
                <div className="row">
                  {perms.can("KICK_MEMBERS") && <button className="small" onClick={() => setConfirm({ member: m, action: "kick" })} aria-label={`Kick ${displayName(m)}`}>Kick</button>}
                  {perms.can("BAN_MEMBERS") && <button className="small danger" onClick={() => setConfirm({ member: m, action: "ban" })} aria-label={`Ban ${displayName(m)}`}>Ban</button>}
                </div>
              )}
            </li>
          );
        })}
      </ul>
      {confirm && (
        <Confirm
          title={`${confirm.action === "kick" ? "Kick" : "Ban"} ${displayName(confirm.member)}?`}
          text={confirm.action === "kick" ? <p>They can come back with a new invite.</p> : (
            <label>Reason <span className="muted">(optional)</span><input value={reason} onChange={(e) => setReason(e.target.value)} maxLength={512} /></label>
          )}
          action={confirm.action === "kick" ? "Kick" : "Ban"}
          onClose={() => { setConfirm(null); setReason(""); }}
          onConfirm={async () => {
            try {
              if (confirm.action === "kick") await together.rest.removeMember(entry.server.id, confirm.member.user.id);
              else await together.rest.ban(entry.server.id, confirm.member.user.id, reason.trim());
            } catch (e) {
              setError(describeError(e));
            }
          }}
        />
      )}
    </div>
  );
}

function Bans({ entry }: { entry: ServerEntry }) {
  const [bans, setBans] = useState<Ban[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = () => together.rest.listBans(entry.server.id).then(setBans, (e) => setError(describeError(e)));
  useEffect(() => {
    void load();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [entry.server.id]);
  return (
    <div className="stack">
      {error && <p className="error" role="alert">{error}</p>}
      {bans?.length === 0 && <p className="muted">Nobody is banned.</p>}
      <ul className="member-rows" aria-label="Bans">
        {bans?.map((b) => (
          <li key={b.user.id} className="member-row">
            <div><strong>{b.user.username}</strong> <span className="muted small">{b.user.tag}</span>{b.reason && <p className="muted small">Reason: {b.reason}</p>}</div>
            <button className="small" onClick={() => together.rest.unban(entry.server.id, b.user.id).then(load, (e) => setError(describeError(e)))}>Revoke ban</button>
          </li>
        ))}
      </ul>
    </div>
  );
}

function Invites({ entry }: { entry: ServerEntry }) {
  const [invites, setInvites] = useState<Invite[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const peers = useNodePeers();
  const load = () => together.rest.listInvites(entry.server.id).then(setInvites, (e) => setError(describeError(e)));
  useEffect(() => {
    void load();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [entry.server.id]);
  return (
    <div className="stack">
      <div className="row"><button className="primary" onClick={() => together.rest.createInvite(entry.server.id, {}).then(load, (e) => setError(describeError(e)))}>Create invite</button></div>
      {error && <p className="error" role="alert">{error}</p>}
      {invites?.length === 0 && <p className="muted">No active invites.</p>}
      <ul className="member-rows" aria-label="Invites">
        {invites?.map((i) => (
          <li key={i.code} className="member-row">
            <div>
              <code className="invite-code">{inviteLink(i, peers)}</code>
              <p className="muted small">{i.uses} {i.uses === 1 ? "use" : "uses"}{i.max_uses ? ` of ${i.max_uses}` : ""} · {i.expires_at ? `expires ${new Date(i.expires_at).toLocaleString()}` : "never expires"}</p>
            </div>
            <button className="small danger" onClick={() => together.rest.deleteInvite(i.code).then(load, (e) => setError(describeError(e)))}>Revoke</button>
          </li>
        ))}
      </ul>
    </div>
  );
}
