import { useState, type FormEvent } from "react";
import { describeError, type ChannelKind, type State } from "@together/core";
import { channelPath, navigate } from "../router.ts";
import { together } from "../sdk.ts";
import { Dialog } from "./Dialog.tsx";

export function CreateChannelDialog({ state, serverId, category, parentId, onClose }: {
  state: State; serverId: string; category: boolean; parentId: string | null; onClose: () => void;
}) {
  const [name, setName] = useState("");
  const [kind, setKind] = useState<ChannelKind>(category ? "category" : "text");
  const [parent, setParent] = useState<string>(parentId ?? "");
  const [topic, setTopic] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const categories = Object.values(state.channels).filter((c) => c.server_id === serverId && c.kind === "category");

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const channel = await together.rest.createChannel(serverId, {
        name: name.trim(),
        kind,
        parent_id: kind === "category" || !parent ? null : parent,
        topic: kind === "text" && topic.trim() ? topic.trim() : null,
      });
      onClose();
      if (channel.kind === "text") navigate(channelPath(serverId, channel.id));
    } catch (err) {
      setError(describeError(err));
      setBusy(false);
    }
  }

  return (
    <Dialog title={category ? "Create category" : "Create channel"} onClose={onClose}>
      <form onSubmit={submit} className="stack">
        {!category && (
          <fieldset className="kind-choice">
            <legend>Channel type</legend>
            <label><input type="radio" name="kind" checked={kind === "text"} onChange={() => setKind("text")} /> # Text</label>
            <label><input type="radio" name="kind" checked={kind === "voice"} onChange={() => setKind("voice")} /> 🔊 Voice</label>
          </fieldset>
        )}
        <label>
          {category ? "Category name" : "Channel name"}
          <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} autoFocus placeholder={category ? "Text channels" : "new-channel"} />
        </label>
        {!category && categories.length > 0 && (
          <label>
            Category
            <select value={parent} onChange={(e) => setParent(e.target.value)}>
              <option value="">No category</option>
              {categories.map((c) => <option key={c.id} value={c.id}>{c.name}</option>)}
            </select>
          </label>
        )}
        {kind === "text" && (
          <label>
            Topic <span className="muted">(optional)</span>
            <input value={topic} onChange={(e) => setTopic(e.target.value)} maxLength={1024} />
          </label>
        )}
        {error && <p className="error" role="alert">{error}</p>}
        <div className="dialog-actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button type="submit" className="primary" disabled={busy || !name.trim()}>Create</button>
        </div>
      </form>
    </Dialog>
  );
}
