/** "Join a server": paste an invite link of this node or of another node. */
import { useState, type FormEvent } from "react";
import { describeError, parseInviteLink } from "@together/core";
import { channelPath, navigate } from "../router.ts";
import { joinWithLink } from "../join.ts";
import { Dialog } from "./Dialog.tsx";

export function JoinServerDialog({ onClose }: { onClose: () => void }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  let hint: string | null = null;
  if (text.trim()) {
    try {
      const link = parseInviteLink(text);
      hint = link.peers.length ? `Invite ${link.code}, through ${link.peers.length === 1 ? "a node address" : `${link.peers.length} node addresses`}.` : `Invite ${link.code}.`;
    } catch {
      hint = null;
    }
  }

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const server = await joinWithLink(text);
      onClose();
      navigate(channelPath(server.id));
    } catch (err) {
      setError(describeError(err));
      setBusy(false);
    }
  }

  return (
    <Dialog title="Join a server" onClose={onClose}>
      <form onSubmit={submit} className="stack">
        <p className="muted">
          Paste an invite link. Links from other Together nodes work too: your node fetches the server from there.
        </p>
        <label>
          Invite link
          <input value={text} onChange={(e) => setText(e.target.value)} required autoFocus spellCheck={false}
            placeholder="https://chat.example.org/invite/Ab3dEf9h" aria-describedby="join-hint" />
        </label>
        <p id="join-hint" className="muted small">{hint ?? "A link such as https://chat.example.org/invite/Ab3dEf9h, or just the code."}</p>
        {error && <p className="error" role="alert">{error}</p>}
        <div className="dialog-actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button type="submit" className="primary" disabled={busy || !text.trim()}>{busy ? "Joining…" : "Join"}</button>
        </div>
      </form>
    </Dialog>
  );
}
