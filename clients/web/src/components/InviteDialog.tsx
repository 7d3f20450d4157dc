import { useEffect, useState } from "react";
import { describeError, formatInviteLink, invitePeers, type Invite } from "@together/core";
import { nodeUrl, together } from "../sdk.ts";
import { Dialog } from "./Dialog.tsx";

/**
 * The link to share: this node's invite page, plus this node's peer
 * addresses when it federates, so people on other nodes can join through
 * theirs. Peers listed on the invite itself (newer nodes) come first.
 */
export function inviteLink(invite: Invite, nodePeers: string[]): string {
  const own = (invite as Invite & { peers?: unknown }).peers;
  const listed = Array.isArray(own) ? own.filter((p): p is string => typeof p === "string") : [];
  return formatInviteLink(nodeUrl(), invite.code, invitePeers([...listed, ...nodePeers]));
}

/** This node's peer addresses (empty when it does not federate). */
export function useNodePeers(): string[] {
  const [peers, setPeers] = useState<string[]>([]);
  useEffect(() => {
    let live = true;
    together.rest.nodeInfo().then((n) => live && setPeers(n.listen_addrs), () => undefined);
    return () => {
      live = false;
    };
  }, []);
  return peers;
}

export function InviteDialog({ serverId, channelId, onClose }: { serverId: string; channelId: string | null; onClose: () => void }) {
  const [invite, setInvite] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const [maxAge, setMaxAge] = useState(86400);
  const peers = useNodePeers();

  useEffect(() => {
    setInvite(null);
    together.rest.createInvite(serverId, { channel_id: channelId, max_age_seconds: maxAge }).then(setInvite, (e) => setError(describeError(e)));
  }, [serverId, channelId, maxAge]);

  async function copy() {
    if (!invite) return;
    try {
      await navigator.clipboard.writeText(inviteLink(invite, peers));
      setCopied(true);
    } catch {
      setCopied(false);
    }
  }

  return (
    <Dialog title="Invite people" onClose={onClose}>
      <div className="stack">
        <label>
          Invite link
          <span className="row">
            <input readOnly value={invite ? inviteLink(invite, peers) : "Creating…"} onFocus={(e) => e.target.select()} aria-describedby="invite-expiry" data-testid="invite-link" />
            <button className="primary" onClick={copy} disabled={!invite}>{copied ? "Copied" : "Copy"}</button>
          </span>
        </label>
        <label>
          Expires after
          <select value={maxAge} onChange={(e) => setMaxAge(Number(e.target.value))}>
            <option value={3600}>1 hour</option>
            <option value={86400}>1 day</option>
            <option value={604800}>7 days</option>
            <option value={0}>Never</option>
          </select>
        </label>
        <p id="invite-expiry" className="muted small">
          {invite?.expires_at ? `This link expires ${new Date(invite.expires_at).toLocaleString()}.` : invite ? "This link never expires." : ""}
        </p>
        {error && <p className="error" role="alert">{error}</p>}
      </div>
    </Dialog>
  );
}
