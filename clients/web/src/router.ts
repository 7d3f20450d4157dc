/** A small history-API router: the path as state, and navigate(). */
import { useEffect, useState } from "react";

const listeners = new Set<() => void>();

export function navigate(to: string, replace = false): void {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  for (const l of listeners) l();
}

export function usePath(): string {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const update = () => setPath(location.pathname);
    listeners.add(update);
    window.addEventListener("popstate", update);
    return () => {
      listeners.delete(update);
      window.removeEventListener("popstate", update);
    };
  }, []);
  return path;
}

export type Route =
  | { name: "login" }
  | { name: "key-login" }
  | { name: "register" }
  | { name: "invite"; code: string }
  | { name: "channels"; serverId: string | null; channelId: string | null };

export function parseRoute(path: string): Route {
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "login" && parts[1] === "key") return { name: "key-login" };
  if (parts[0] === "login") return { name: "login" };
  if (parts[0] === "register") return { name: "register" };
  if (parts[0] === "invite" && parts[1]) return { name: "invite", code: parts[1] };
  if (parts[0] === "channels") return { name: "channels", serverId: parts[1] ?? null, channelId: parts[2] ?? null };
  return { name: "channels", serverId: null, channelId: null };
}

export function channelPath(serverId: string, channelId?: string | null): string {
  return `/channels/${serverId}${channelId ? `/${channelId}` : ""}`;
}

/** Where to go after signing in (`?next=`), only within this app. */
export function nextPath(): string {
  const next = new URLSearchParams(location.search).get("next");
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/channels";
}

/** A link that navigates without reloading. */
export function linkHandler(to: string) {
  return (e: { preventDefault(): void; metaKey?: boolean; ctrlKey?: boolean }) => {
    if (e.metaKey || e.ctrlKey) return;
    e.preventDefault();
    navigate(to);
  };
}
