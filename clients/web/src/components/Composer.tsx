/**
 * The message box: Enter sends, Shift+Enter breaks the line; replies;
 * files upload as soon as they are picked, with progress; typing pings
 * at most every 8 s.
 */
import { useRef, useState, type KeyboardEvent } from "react";
import { describeError, type Attachment, type Channel, type Message } from "@together/core";
import { together } from "../sdk.ts";

interface Pending {
  key: number;
  file: File;
  loaded: number;
  total: number;
  attachment?: Attachment;
  error?: string;
  abort: AbortController;
}

let keys = 0;

export function Composer({ channel, canSend, canAttach, replyTo, replyName, onCancelReply, onSent }: {
  channel: Channel;
  canSend: boolean;
  canAttach: boolean;
  replyTo: Message | null;
  replyName: string;
  onCancelReply: () => void;
  onSent: () => void;
}) {
  const [text, setText] = useState("");
  const [pending, setPending] = useState<Pending[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [sending, setSending] = useState(false);
  const lastTyping = useRef(0);
  const fileInput = useRef<HTMLInputElement>(null);
  const input = useRef<HTMLTextAreaElement>(null);

  const uploading = pending.some((p) => !p.attachment && !p.error);

  function update(key: number, patch: Partial<Pending>) {
    setPending((list) => list.map((p) => (p.key === key ? { ...p, ...patch } : p)));
  }

  function addFiles(files: FileList | File[]) {
    for (const file of Array.from(files)) {
      const item: Pending = { key: ++keys, file, loaded: 0, total: file.size, abort: new AbortController() };
      setPending((list) => [...list, item]);
      together.rest
        .upload(channel.id, file, file.name, (p) => update(item.key, { loaded: p.loaded, total: p.total }), item.abort.signal)
        .then((attachment) => update(item.key, { attachment, loaded: file.size }))
        .catch((e) => {
          if ((e as Error).name !== "AbortError") update(item.key, { error: describeError(e) });
        });
    }
  }

  function remove(p: Pending) {
    p.abort.abort();
    setPending((list) => list.filter((x) => x.key !== p.key));
  }

  async function send() {
    const content = text.trim();
    const ready = pending.filter((p) => p.attachment);
    if ((!content && ready.length === 0) || uploading || sending) return;
    setSending(true);
    setError(null);
    try {
      await together.send(channel.id, content, {
        replyTo: replyTo?.id ?? null,
        attachmentIds: ready.map((p) => (p.attachment as Attachment).id),
      });
      setText("");
      setPending([]);
      lastTyping.current = 0;
      onSent();
    } catch (e) {
      setError(describeError(e));
    } finally {
      setSending(false);
      input.current?.focus();
    }
  }

  function onKeyDown(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      void send();
    } else if (e.key === "Escape" && replyTo) {
      onCancelReply();
    }
  }

  function onChange(value: string) {
    setText(value);
    const now = Date.now();
    if (value.trim() && now - lastTyping.current > 8000) {
      lastTyping.current = now;
      together.rest.startTyping(channel.id).catch(() => undefined);
    }
  }

  if (!canSend) {
    return <div className="composer disabled"><p className="muted">You do not have permission to send messages in this channel.</p></div>;
  }

  return (
    <div className="composer"
      onDragOver={(e) => { if (canAttach) e.preventDefault(); }}
      onDrop={(e) => { if (canAttach && e.dataTransfer.files.length) { e.preventDefault(); addFiles(e.dataTransfer.files); } }}>
      {replyTo && (
        <div className="replying">
          <span>Replying to <strong>{replyName}</strong></span>
          <button className="icon small" aria-label="Cancel reply" onClick={onCancelReply}>✕</button>
        </div>
      )}
      {pending.length > 0 && (
        <ul className="uploads" aria-label="Attachments">
          {pending.map((p) => {
            const pct = p.total ? Math.round((p.loaded / p.total) * 100) : 0;
            return (
              <li key={p.key} className="upload">
                <span className="filename">{p.file.name}</span>
                {p.error ? (
                  <span className="error small" role="alert">{p.error}</span>
                ) : (
                  <progress max={100} value={pct} aria-label={`Uploading ${p.file.name}`}>{pct}%</progress>
                )}
                <span className="muted small">{p.attachment ? "ready" : p.error ? "failed" : `${pct}%`}</span>
                <button className="icon small" aria-label={`Remove ${p.file.name}`} onClick={() => remove(p)}>✕</button>
              </li>
            );
          })}
        </ul>
      )}
      <div className="composer-row">
        {canAttach && (
          <>
            <button className="icon attach" aria-label="Attach files" title="Attach files" onClick={() => fileInput.current?.click()}>+</button>
            <input ref={fileInput} type="file" multiple hidden aria-label="Choose files"
              onChange={(e) => { if (e.target.files) addFiles(e.target.files); e.target.value = ""; }} />
          </>
        )}
        <label className="visually-hidden" htmlFor="composer-input">Message #{channel.name}</label>
        <textarea id="composer-input" ref={input} rows={1} placeholder={`Message #${channel.name}`} value={text}
          onChange={(e) => onChange(e.target.value)} onKeyDown={onKeyDown} maxLength={4000}
          onPaste={(e) => { if (canAttach && e.clipboardData.files.length) { e.preventDefault(); addFiles(e.clipboardData.files); } }} />
        <button className="primary send" onClick={() => void send()} disabled={sending || uploading || (!text.trim() && !pending.some((p) => p.attachment))}>
          Send
        </button>
      </div>
      {error && <p className="error small" role="alert">{error}</p>}
    </div>
  );
}
