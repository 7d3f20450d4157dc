/**
 * Invite links, local and cross-node. A link names an invite code and, for
 * a community on another node, one or more peer addresses of that node
 * (libp2p multiaddrs ending in `/p2p/<peer id>`, spec/federation.md §1):
 *
 *     https://home.example/invite/Ab3dEf9h?peer=/ip4/203.0.113.7/udp/4001/quic-v1/p2p/12D3Koo…
 *
 * Parsing is tolerant, because people paste links in many shapes: a whole
 * URL (peers as repeated `peer`, or comma-separated `peers`/`p`, or in the
 * fragment), a bare code, or a code followed by addresses separated by spaces
 * or `@`. {@link planJoin} then decides whether this node can redeem the code
 * itself or must ask a peer (`POST /api/federation/join`).
 */

export interface InviteLink {
  code: string;
  /** Peer addresses of the community's node, each a multiaddr ending in `/p2p/<peer id>`. */
  peers: string[];
  /** The http(s) origin the link points at, when it is a URL. */
  origin: string | null;
}

/** Why a pasted text is not an invite we can use, in words for a person. */
export class InviteLinkError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InviteLinkError";
  }
}

const CODE = /^[A-Za-z0-9_-]{4,32}$/;
const MULTIADDR_START = /^\/(ip4|ip6|dns|dns4|dns6|dnsaddr)\//;
const PEER_PARAMS = ["peer", "peers", "p", "addr", "addrs"];
/** More than a handful of addresses is noise; a node tries them in order. */
export const MAX_INVITE_PEERS = 8;

/** The peer id at the end of a multiaddr (`…/p2p/<id>`), or null. */
export function peerIdOf(multiaddr: string): string | null {
  const m = /\/p2p\/([1-9A-HJ-NP-Za-km-z]+)\/?$/.exec(multiaddr);
  return m ? m[1] : null;
}

function splitPeers(value: string): string[] {
  return value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function checkPeer(addr: string): string {
  let a = addr.trim();
  if (/%2F/i.test(a)) {
    try {
      a = decodeURIComponent(a);
    } catch {
      /* keep it as it is */
    }
  }
  a = a.replace(/\/+$/, "");
  if (!MULTIADDR_START.test(a)) {
    throw new InviteLinkError(`"${addr}" is not a node address: it should look like /ip4/203.0.113.7/udp/4001/quic-v1/p2p/12D3Koo…`);
  }
  if (!peerIdOf(a)) throw new InviteLinkError(`the node address "${addr}" must end in /p2p/<peer id>`);
  return a;
}

function checkCode(code: string): string {
  const c = code.trim();
  if (!CODE.test(c)) throw new InviteLinkError(`"${code}" is not an invite code: codes are 4 to 32 letters and digits`);
  return c;
}

function unique(list: string[]): string[] {
  return [...new Set(list)].slice(0, MAX_INVITE_PEERS);
}

/** Reads an invite link or code as a person might paste it. Throws {@link InviteLinkError}. */
export function parseInviteLink(input: string): InviteLink {
  const text = input.trim();
  if (!text) throw new InviteLinkError("paste an invite link or code");

  // A URL: http(s)://host/invite/CODE?peer=…, or together://invite/CODE?peer=…
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text);
  if (scheme) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new InviteLinkError("this link cannot be read; check that it was copied whole");
    }
    const http = url.protocol === "http:" || url.protocol === "https:";
    // `together://invite/CODE`: the host is "invite".
    const segments = [url.host && !http ? url.host : "", ...url.pathname.split("/")].filter(Boolean).map((s) => decodeURIComponent(s));
    const at = segments.lastIndexOf("invite");
    const code = at >= 0 ? segments[at + 1] : !http && segments.length === 1 ? segments[0] : undefined;
    if (!code) throw new InviteLinkError("this link has no invite code in it (it should end in /invite/<code>)");
    const peers: string[] = [];
    const params = [url.searchParams, new URLSearchParams(url.hash.replace(/^#/, ""))];
    for (const p of params) for (const name of PEER_PARAMS) for (const v of p.getAll(name)) peers.push(...splitPeers(v));
    return { code: checkCode(code), peers: unique(peers.map(checkPeer)), origin: http ? url.origin : null };
  }

  // A code, maybe followed by addresses: "CODE /ip4/…/p2p/…", "CODE@/ip4/…".
  const parts = text.split(/[\s,]+|@(?=\/)/).filter(Boolean);
  const [first, ...rest] = parts;
  if (MULTIADDR_START.test(first)) throw new InviteLinkError("the invite code is missing: paste the whole link, or the code first and then the node address");
  return { code: checkCode(first.replace(/^invite\//, "")), peers: unique(rest.map(checkPeer)), origin: null };
}

/** Builds the link an invite is shared as: this node's page, plus its peer addresses when it federates. */
export function formatInviteLink(origin: string, code: string, peers: string[] = []): string {
  const base = `${origin.replace(/\/+$/, "")}/invite/${encodeURIComponent(code)}`;
  const list = unique(peers);
  if (!list.length) return base;
  // Multiaddrs keep their slashes: they are legal in a query and easier to read that way.
  return `${base}?${list.map((p) => `peer=${encodeURI(p).replace(/[&#?+]/g, encodeURIComponent)}`).join("&")}`;
}

/**
 * The addresses worth putting in an invite: those ending in `/p2p/<id>`,
 * reachable ones (not a wildcard) first and loopback last, a few at most.
 */
export function invitePeers(listenAddrs: string[], max = 3): string[] {
  const usable = listenAddrs.filter((a) => MULTIADDR_START.test(a) && peerIdOf(a) && !/\/ip4\/0\.0\.0\.0\/|\/ip6\/::\//.test(a));
  const loopback = (a: string) => /^\/ip4\/127\.|^\/ip6\/::1\//.test(a);
  return unique([...usable.filter((a) => !loopback(a)), ...usable.filter(loopback)]).slice(0, max);
}

export type JoinPlan =
  | { kind: "local"; code: string }
  | { kind: "remote"; code: string; peers: string[] };

/**
 * Where to redeem an invite. `here` is the node the client talks to: its
 * origin and (when it federates) its peer id.
 *  - no peers, and the link is this node's or carries no origin → this node;
 *  - a peer that is this node → this node;
 *  - peers of another node → that node, through this one;
 *  - a link to another node's page without peers → an error saying so.
 */
export function planJoin(link: InviteLink, here: { origin: string; peerId?: string | null }): JoinPlan {
  const ownOrigin = here.origin.replace(/\/+$/, "");
  if (here.peerId && link.peers.some((p) => peerIdOf(p) === here.peerId)) return { kind: "local", code: link.code };
  if (link.peers.length) {
    if (link.origin && link.origin === ownOrigin) return { kind: "local", code: link.code };
    return { kind: "remote", code: link.code, peers: link.peers };
  }
  if (link.origin && link.origin !== ownOrigin) {
    const host = link.origin.replace(/^https?:\/\//, "");
    throw new InviteLinkError(
      `this invite is for a community on another node (${host}) and carries no node address. Ask for a new link from that node, or sign in there.`,
    );
  }
  return { kind: "local", code: link.code };
}
