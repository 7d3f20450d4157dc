/**
 * One text channel: header (name, topic, search, members toggle), the
 * history with infinite scroll upwards (keyset `before`), an unread
 * divider, typing indicator and the composer.
 */
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { describeError, typingUsers, displayName, type Channel, type Message, type ServerEntry, type State } from "@together/core";
import { together } from "../sdk.ts";
import type { Perms } from "../perms.ts";
import { MessageItem } from "./MessageItem.tsx";
import { Composer } from "./Composer.tsx";

export function MessagePane({ state, entry, channel, perms, onMenu, onToggleMembers, membersShown, onSearch }: {
  state: State;
  entry: ServerEntry;
  channel: Channel;
  perms: Perms;
  onMenu: () => void;
  onToggleMembers: () => void;
  membersShown: boolean;
  onSearch: (q: string) => void;
}) {
  const history = state.messages[channel.id];
  const scroller = useRef<HTMLDivElement>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [replyTo, setReplyTo] = useState<Message | null>(null);
  const [query, setQuery] = useState("");
  // The read position when the channel was opened: new messages after it get a divider.
  const [readMarker] = useState(() => state.lastReadId[channel.id] ?? null);
  const stickToBottom = useRef(true);
  const prevHeight = useRef<{ height: number; first: string | undefined } | null>(null);

  const messages = useMemo(() => (history ? history.order.map((id) => history.byId[id]) : []), [history]);

  // First page.
  useEffect(() => {
    if (history?.loaded) return;
    setLoading(true);
    together.loadLatest(channel.id).catch((e) => setError(describeError(e))).finally(() => setLoading(false));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [channel.id]);

  // What is on screen is read.
  const newest = history?.order[history.order.length - 1];
  useEffect(() => {
    if (newest && document.visibilityState === "visible") together.store.dispatch({ type: "channel/read", channelId: channel.id, messageId: newest });
  }, [newest, channel.id]);

  const loadOlder = useCallback(async () => {
    const h = together.store.getState().messages[channel.id];
    if (loading || !h?.loaded || h.reachedStart) return;
    const el = scroller.current;
    prevHeight.current = el ? { height: el.scrollHeight, first: h.order[0] } : null;
    setLoading(true);
    try {
      await together.loadOlder(channel.id);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setLoading(false);
    }
  }, [channel.id, loading]);

  // Keep the view still when older messages are prepended; follow new ones when at the bottom.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const prev = prevHeight.current;
    if (prev && prev.first !== history?.order[0]) {
      el.scrollTop += el.scrollHeight - prev.height;
      prevHeight.current = null;
    } else if (stickToBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
  }, [messages.length, history?.order]);

  // A short first page may not fill the screen: load more until it scrolls.
  useEffect(() => {
    const el = scroller.current;
    if (el && history?.loaded && !history.reachedStart && el.scrollHeight <= el.clientHeight + 10) void loadOlder();
  }, [history?.loaded, history?.reachedStart, messages.length, loadOlder]);

  function onScroll() {
    const el = scroller.current;
    if (!el) return;
    stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < 300) void loadOlder();
  }

  const typers = typingUsers(state, channel.id);
  const members = state.members[entry.server.id] ?? {};
  const typingText = typers.length === 0 ? "" : typers.length > 3 ? "Several people are typing…" :
    `${typers.map((id) => displayName(members[id], state.users[id])).join(", ")} ${typers.length === 1 ? "is" : "are"} typing…`;

  function submitSearch(e: FormEvent) {
    e.preventDefault();
    if (query.trim()) onSearch(query.trim());
  }

  const canSend = perms.can("SEND_MESSAGES", "channel");
  let dividerShown = false;

  return (
    <section className="pane" aria-labelledby="channel-title">
      <header className="pane-head">
        <button className="icon menu-button" aria-label="Open menu" onClick={onMenu}>☰</button>
        <h1 id="channel-title"><span className="hash" aria-hidden="true">#</span>{channel.name}</h1>
        {channel.topic && <p className="topic muted" title={channel.topic}>{channel.topic}</p>}
        <form className="search-form" role="search" onSubmit={submitSearch}>
          <label className="visually-hidden" htmlFor="search-input">Search messages</label>
          <input id="search-input" type="search" placeholder="Search" value={query} onChange={(e) => setQuery(e.target.value)} />
        </form>
        <button className="icon" aria-pressed={membersShown} aria-label={membersShown ? "Hide member list" : "Show member list"} onClick={onToggleMembers}>👥</button>
      </header>
      <div className="messages" ref={scroller} onScroll={onScroll} tabIndex={0} aria-label={`Messages in ${channel.name}`} role="log" aria-live="polite" aria-relevant="additions">
        {history?.reachedStart && (
          <div className="channel-start">
            <h2>Welcome to #{channel.name}!</h2>
            <p className="muted">This is the start of the channel.</p>
          </div>
        )}
        {loading && <p className="muted center" role="status">Loading messages…</p>}
        {messages.map((m, i) => {
          const prev = messages[i - 1];
          const showDivider = !dividerShown && readMarker !== null && m.id > readMarker && m.author.id !== state.me?.id;
          if (showDivider) dividerShown = true;
          const grouped = !!prev && !showDivider && prev.author.id === m.author.id && !m.reply_to &&
            Date.parse(m.created_at) - Date.parse(prev.created_at) < 5 * 60_000;
          return (
            <div key={m.id}>
              {showDivider && <div className="new-divider" role="separator" aria-label="New messages"><span>New</span></div>}
              <MessageItem
                message={m}
                grouped={grouped}
                state={state}
                entry={entry}
                perms={perms}
                replied={m.reply_to ? history?.byId[m.reply_to] ?? null : null}
                onReply={() => setReplyTo(m)}
              />
            </div>
          );
        })}
        {error && <p className="error" role="alert">{error}</p>}
      </div>
      <Composer
        channel={channel}
        canSend={canSend}
        canAttach={perms.can("ATTACH_FILES", "channel")}
        replyTo={replyTo}
        replyName={replyTo ? displayName(members[replyTo.author.id], replyTo.author) : ""}
        onCancelReply={() => setReplyTo(null)}
        onSent={() => {
          setReplyTo(null);
          stickToBottom.current = true;
        }}
      />
      <div className="typing" aria-live="polite">{typingText}</div>
    </section>
  );
}
