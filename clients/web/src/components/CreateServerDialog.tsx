import { useState, type FormEvent } from "react";
import { describeError } from "@together/core";
import { channelPath, navigate } from "../router.ts";
import { together } from "../sdk.ts";
import { Dialog } from "./Dialog.tsx";

export function CreateServerDialog({ onClose }: { onClose: () => void }) {
  const me = together.store.getState().me;
  const [name, setName] = useState(me ? `${me.username}'s server` : "");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const server = await together.rest.createServer({ name: name.trim() });
      onClose();
      navigate(channelPath(server.id));
    } catch (err) {
      setError(describeError(err));
      setBusy(false);
    }
  }

  return (
    <Dialog title="Create a server" onClose={onClose}>
      <form onSubmit={submit} className="stack">
        <p className="muted">A server is where you and your friends talk. You can change its name later.</p>
        <label>
          Server name
          <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} autoFocus />
        </label>
        {error && <p className="error" role="alert">{error}</p>}
        <div className="dialog-actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button type="submit" className="primary" disabled={busy || !name.trim()}>Create</button>
        </div>
      </form>
    </Dialog>
  );
}
