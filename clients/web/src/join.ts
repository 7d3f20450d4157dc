/** Redeeming an invite link on this node or, for a community elsewhere, through a peer of its node. */
import { ApiError, parseInviteLink, planJoin, type InviteLink, type Server } from "@together/core";
import { nodeUrl, together } from "./sdk.ts";

/** This node's libp2p peer id, when it federates (null when unknown). */
async function ownPeerId(): Promise<string | null> {
  try {
    return (await together.rest.nodeInfo()).peer_id ?? null;
  } catch {
    return null;
  }
}

/**
 * Joins the community an invite names. A link of another node goes to
 * `POST /api/federation/join`, trying its peer addresses in turn while the
 * node reports it could not reach a peer.
 */
export async function joinWithLink(input: string | InviteLink): Promise<Server> {
  const link = typeof input === "string" ? parseInviteLink(input) : input;
  const plan = planJoin(link, { origin: nodeUrl(), peerId: link.peers.length ? await ownPeerId() : null });
  if (plan.kind === "local") return together.rest.acceptInvite(plan.code);
  let last: unknown = null;
  for (const peer of plan.peers) {
    try {
      return await together.rest.joinRemote(plan.code, peer);
    } catch (err) {
      last = err;
      // Another address of the same node may work; anything else is the answer.
      if (!(err instanceof ApiError && err.code === "peer_failed")) throw err;
    }
  }
  throw last ?? new Error("the invite names no node address");
}
