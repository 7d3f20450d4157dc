/** One message: author, time, text, reply preview, attachments, reactions and its actions. */
import { memo, useState, type KeyboardEvent } from "react";
import { describeError, displayName, type Message, type ServerEntry, type State } from "@together/core";
import { together } from "../sdk.ts";
import type { Perms } from "../perms.ts";
import { AttachmentView } from "./AttachmentView.tsx";
import { Confirm } from "./Dialog.tsx";

export const QUICK_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

function time(iso: string): string {
  const d = new Date(iso);
  const today = new Date();
  const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === today.toDateString() ? `Today at ${t}` : `${d.toLocaleDateString()} ${t}`;
}

function roleColor(state: State, entry: ServerEntry, userId: string): string | undefined {
  const member = state.members[entry.server.id]?.[userId];
  if (!member) return undefined;
  const roles = member.roles.map((id) => entry.roles[id]).filter((r) => r && r.color !== null && r.color !== undefined);
  roles.sort((a, b) => b.position - a.position);
  const c = roles[0]?.color;
  return c === null || c === undefined ? undefined : `#${c.toString(16).padStart(6, "0")}`;
}

function MessageItemInner({ message: m, grouped, state, entry, perms, replied, onReply }: {
  message: Message;
  grouped: boolean;
  state: State;
  entry: ServerEntry;
  perms: Perms;
  replied: Message | null;
  onReply: () => void;
}) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(m.content);
  const [picker, setPicker] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const mine = state.me?.id === m.author.id;
  const member = state.members[entry.server.id]?.[m.author.id];
  const name = displayName(member, m.author);
  const canDelete = mine || perms.can("MANAGE_MESSAGES", "channel");
  const canReact = perms.can("ADD_REACTIONS", "channel");
  const canSend = perms.can("SEND_MESSAGES", "channel");

  async function act(f: () => Promise<unknown>) {
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(describeError(e));
    }
  }

  async function saveEdit() {
    const content = draft.trim();
    if (!content && m.attachments.length === 0) return;
    if (content === m.content) {
      setEditing(false);
      return;
    }
    await act(async () => {
      const updated = await together.rest.editMessage(m.id, content);
      together.store.dispatch({ type: "message/upsert", message: updated });
      setEditing(false);
    });
  }

  function editKeys(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      void saveEdit();
    } else if (e.key === "Escape") {
      e.preventDefault();
      setEditing(false);
      setDraft(m.content);
    }
  }

  function toggleReaction(emoji: string, me: boolean) {
    setPicker(false);
    void act(() => (me ? together.rest.removeReaction(m.id, emoji) : together.rest.addReaction(m.id, emoji)));
  }

  return (
    <article className={`message${grouped ? " grouped" : ""}`} id={`message-${m.id}`} aria-label={`${name}: ${m.content.slice(0, 80)}`} data-message-id={m.id}>
      {replied !== null || m.reply_to ? (
        <div className="reply-preview muted small">
          <span aria-hidden="true">↱ </span>
          {replied ? <>replying to <strong>{displayName(state.members[entry.server.id]?.[replied.author.id], replied.author)}</strong>: {replied.content.slice(0, 100)}</> : "replying to an earlier message"}
        </div>
      ) : null}
      {!grouped && (
        <header className="message-head">
          <span className="avatar" aria-hidden="true">{[...name][0]?.toUpperCase()}</span>
          <strong className="author" style={{ color: roleColor(state, entry, m.author.id) }}>{name}</strong>
          <time className="muted small" dateTime={m.created_at}>{time(m.created_at)}</time>
        </header>
      )}
      <div className="message-body">
        {editing ? (
          <div className="edit-box">
            <label className="visually-hidden" htmlFor={`edit-${m.id}`}>Edit message</label>
            <textarea id={`edit-${m.id}`} value={draft} autoFocus onChange={(e) => setDraft(e.target.value)} onKeyDown={editKeys} rows={Math.min(8, draft.split("\n").length + 1)} />
            <p className="muted small">Enter to save · Escape to cancel</p>
            <div className="row">
              <button onClick={() => { setEditing(false); setDraft(m.content); }}>Cancel</button>
              <button className="primary" onClick={() => void saveEdit()}>Save</button>
            </div>
          </div>
        ) : (
          m.content && (
            <p className="content">
              {m.content}
              {m.edited_at && <span className="muted small edited" title={new Date(m.edited_at).toLocaleString()}> (edited)</span>}
            </p>
          )
        )}
        {m.attachments.length > 0 && (
          <div className="attachments">
            {m.attachments.map((a) => <AttachmentView key={a.id} attachment={a} />)}
          </div>
        )}
        {m.reactions.length > 0 && (
          <div className="reactions" aria-label="Reactions">
            {m.reactions.map((r) => (
              <button key={r.emoji} className={`reaction${r.me ? " mine" : ""}`} aria-pressed={r.me} disabled={!canReact && !r.me}
                aria-label={`${r.emoji} ${r.count} ${r.count === 1 ? "reaction" : "reactions"}${r.me ? ", including yours" : ""}`}
                onClick={() => toggleReaction(r.emoji, r.me)}>
                <span aria-hidden="true">{r.emoji}</span> <span className="count">{r.count}</span>
              </button>
            ))}
          </div>
        )}
        {error && <p className="error small" role="alert">{error}</p>}
      </div>
      {!editing && (
        <div className="message-actions" role="toolbar" aria-label="Message actions">
          {canReact && <button className="icon small" aria-label="Add reaction" aria-expanded={picker} onClick={() => setPicker((v) => !v)}>☺</button>}
          {canSend && <button className="icon small" aria-label="Reply" onClick={onReply}>↩</button>}
          {mine && <button className="icon small" aria-label="Edit message" onClick={() => { setDraft(m.content); setEditing(true); }}>✎</button>}
          {canDelete && <button className="icon small danger-text" aria-label="Delete message" onClick={() => setConfirmDelete(true)}>🗑</button>}
          {picker && (
            <div className="emoji-picker" role="group" aria-label="Pick a reaction">
              {QUICK_EMOJI.map((e) => {
                const mineAlready = m.reactions.some((r) => r.emoji === e && r.me);
                return <button key={e} className="icon" aria-label={`React with ${e}`} onClick={() => toggleReaction(e, mineAlready)}>{e}</button>;
              })}
            </div>
          )}
        </div>
      )}
      {confirmDelete && (
        <Confirm title="Delete message" text={<p>Delete this message? This cannot be undone.</p>} action="Delete" onClose={() => setConfirmDelete(false)}
          onConfirm={() => act(() => together.rest.deleteMessage(m.id))} />
      )}
    </article>
  );
}

export const MessageItem = memo(MessageItemInner);
