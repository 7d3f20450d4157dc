/** Members grouped by hoisted role, then online / offline. */
import { displayName, sortedRoles, type Member, type ServerEntry, type State } from "@together/core";

export function MemberList({ state, entry }: { state: State; entry: ServerEntry }) {
  const members = Object.values(state.members[entry.server.id] ?? {});
  const online = (m: Member) => {
    const s = state.presences[m.user.id]?.status ?? (m.user.id === state.me?.id ? state.me?.status : "offline");
    return s && s !== "offline" && s !== "invisible";
  };
  const hoisted = sortedRoles(entry).filter((r) => r.hoist && r.id !== entry.server.id);
  const groups: { label: string; members: Member[] }[] = [];
  const placed = new Set<string>();
  for (const role of hoisted) {
    const list = members.filter((m) => !placed.has(m.user.id) && online(m) && m.roles.includes(role.id));
    list.forEach((m) => placed.add(m.user.id));
    if (list.length) groups.push({ label: role.name, members: list });
  }
  const on = members.filter((m) => !placed.has(m.user.id) && online(m));
  const off = members.filter((m) => !placed.has(m.user.id) && !online(m));
  if (on.length) groups.push({ label: "Online", members: on });
  if (off.length) groups.push({ label: "Offline", members: off });
  const byName = (a: Member, b: Member) => displayName(a).localeCompare(displayName(b));

  return (
    <aside className="members" aria-label="Members">
      {groups.map((g) => (
        <section key={g.label}>
          <h3>{g.label} — {g.members.length}</h3>
          <ul>
            {g.members.sort(byName).map((m) => {
              const status = online(m) ? state.presences[m.user.id]?.status ?? "online" : "offline";
              return (
                <li key={m.user.id} className={online(m) ? "" : "offline"}>
                  <span className={`avatar status-${status}`} aria-hidden="true">{[...displayName(m)][0]?.toUpperCase()}</span>
                  <span className="member-name">{displayName(m)}</span>
                  <span className="visually-hidden">, {status}</span>
                  {entry.server.owner_id === m.user.id && <span title="Server owner" aria-label="owner"> 👑</span>}
                </li>
              );
            })}
          </ul>
        </section>
      ))}
    </aside>
  );
}
