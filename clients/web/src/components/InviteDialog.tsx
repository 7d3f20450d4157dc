import { useEffect, useState } from "react";
import { describeError, type Invite } from "@together/core";
import { together } from "../sdk.ts";
import { Dialog } from "./Dialog.tsx";

export function inviteLink(code: string): string {
  return `${location.origin}/invite/${code}`;
}

export function InviteDialog({ serverId, channelId, onClose }: { serverId: string; channelId: string | null; onClose: () => void }) {
  const [invite, setInvite] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const [maxAge, setMaxAge] = useState(86400);

  useEffect(() => {
    setInvite(null);
    together.rest.createInvite(serverId, { channel_id: channelId, max_age_seconds: maxAge }).then(setInvite, (e) => setError(describeError(e)));
  }, [serverId, channelId, maxAge]);

  async function copy() {
    if (!invite) return;
    try {
      await navigator.clipboard.writeText(inviteLink(invite.code));
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
            <input readOnly value={invite ? inviteLink(invite.code) : "Creating…"} onFocus={(e) => e.target.select()} aria-describedby="invite-expiry" data-testid="invite-link" />
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
