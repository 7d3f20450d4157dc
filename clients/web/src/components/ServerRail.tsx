/** The column of server icons, with unread dots, create-server and the theme toggle. */
import { isUnread, type State } from "@together/core";
import { channelPath, linkHandler } from "../router.ts";
import { useTheme } from "../theme.ts";
import { initials } from "./InvitePage.tsx";

export function ServerRail({ state, activeServerId, onCreate, onJoin }: { state: State; activeServerId: string | null; onCreate: () => void; onJoin: () => void }) {
  const [theme, cycleTheme] = useTheme();
  const servers = Object.values(state.servers).sort((a, b) => (a.server.created_at < b.server.created_at ? -1 : 1));
  return (
    <div className="rail">
      <ul className="rail-list" aria-label="Servers">
        {servers.map(({ server }) => {
          const unread = Object.values(state.channels).some((c) => c.server_id === server.id && isUnread(state, c.id));
          const active = server.id === activeServerId;
          return (
            <li key={server.id} className={active ? "active" : undefined}>
              <a
                href={channelPath(server.id)}
                onClick={linkHandler(channelPath(server.id))}
                className="server-icon"
                aria-current={active ? "page" : undefined}
                aria-label={`${server.name}${unread ? " (unread messages)" : ""}`}
                title={server.name}
              >
                {server.icon_url ? <img src={server.icon_url} alt="" /> : initials(server.name)}
              </a>
              {unread && !active && <span className="dot" aria-hidden="true" />}
            </li>
          );
        })}
        <li>
          <button className="server-icon add" onClick={onCreate} aria-label="Create a server" title="Create a server">+</button>
        </li>
        <li>
          <button className="server-icon add" onClick={onJoin} aria-label="Join a server" title="Join a server with an invite link">⇥</button>
        </li>
      </ul>
      <button
        className="server-icon theme"
        onClick={cycleTheme}
        aria-label={`Theme: ${theme}. Change theme`}
        title={`Theme: ${theme}`}
      >
        {theme === "dark" ? "☾" : theme === "light" ? "☀" : "◐"}
      </button>
    </div>
  );
}
