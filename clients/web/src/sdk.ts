/**
 * The app's one Together client, the node it talks to, and React hooks
 * over the SDK's store.
 */
import { useEffect, useState, useSyncExternalStore } from "react";
import { Together, localStorageTokens, type State, type Tokens } from "@together/core";

const NODE_KEY = "together.node";

/** The node's origin: chosen on the sign-in page, else the page's own. */
export function nodeUrl(): string {
  const stored = localStorage.getItem(NODE_KEY);
  return stored && /^https?:\/\//.test(stored) ? stored.replace(/\/+$/, "") : location.origin;
}

export function setNodeUrl(url: string | null): void {
  if (!url || url.replace(/\/+$/, "") === location.origin) localStorage.removeItem(NODE_KEY);
  else localStorage.setItem(NODE_KEY, url.replace(/\/+$/, ""));
}

function makeClient(): Together {
  // On the node that served this page the refresh token stays in its
  // HttpOnly cookie; another node (chosen at sign-in) is cross-site, so
  // its refresh token is kept in local storage.
  const baseUrl = nodeUrl();
  return new Together({ baseUrl, storage: localStorageTokens(), refreshCookie: baseUrl === location.origin });
}

export let together = makeClient();

/** Re-creates the client after the node address changed (signed out only). */
export function reconnectTo(url: string | null): void {
  setNodeUrl(url);
  together.stop();
  together = makeClient();
}

/** The whole store state; components derive what they need with useMemo. */
export function useStoreState(): State {
  return useSyncExternalStore(together.store.subscribe, together.store.getState);
}

/** The current tokens (null when signed out). */
export function useTokens(): Tokens | null {
  const [tokens, setTokens] = useState(together.rest.tokens.current);
  useEffect(() => together.rest.tokens.subscribe(setTokens), []);
  return tokens;
}

export function useGatewayStatus() {
  const [status, setStatus] = useState(together.gateway.status);
  useEffect(() => together.onStatus(setStatus), []);
  return status;
}
