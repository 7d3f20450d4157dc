/** Full-text search over a server's messages; a result opens its channel at that message. */
import { useEffect, useState, type FormEvent } from "react";
import { describeError, type Message, type State } from "@together/core";
import { channelPath, navigate } from "../router.ts";
import { together } from "../sdk.ts";

export function SearchPanel({ state, serverId, initialQuery, onClose }: { state: State; serverId: string; initialQuery: string; onClose: () => void }) {
  const [query, setQuery] = useState(initialQuery);
  const [results, setResults] = useState<Message[] | null>(null);
  const [total, setTotal] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function run(q: string) {
    setError(null);
    setResults(null);
    try {
      const res = await together.rest.search(serverId, { q, limit: 25 });
      setResults(res.messages);
      setTotal(res.total_estimate ?? null);
    } catch (e) {
      setError(describeError(e));
    }
  }

  useEffect(() => {
    setQuery(initialQuery);
    void run(initialQuery);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [initialQuery, serverId]);

  async function open(m: Message) {
    try {
      const around = await together.rest.listMessages(m.channel_id, { around: m.id, limit: 50 });
      together.store.dispatch({ type: "messages/loaded", channelId: m.channel_id, messages: around, direction: "after", limit: 50 });
    } catch {
      /* the channel still opens */
    }
    navigate(channelPath(m.server_id, m.channel_id));
    setTimeout(() => {
      const el = document.getElementById(`message-${m.id}`);
      el?.scrollIntoView({ block: "center" });
      el?.classList.add("highlight");
      setTimeout(() => el?.classList.remove("highlight"), 2000);
    }, 150);
  }

  function submit(e: FormEvent) {
    e.preventDefault();
    if (query.trim()) void run(query.trim());
  }

  return (
    <aside className="members search-panel" aria-label="Search results">
      <div className="search-head">
        <form role="search" onSubmit={submit}>
          <label className="visually-hidden" htmlFor="search-panel-input">Search this server</label>
          <input id="search-panel-input" type="search" value={query} onChange={(e) => setQuery(e.target.value)} />
        </form>
        <button className="icon" aria-label="Close search" onClick={onClose}>✕</button>
      </div>
      <p className="muted small" role="status">
        {error ? "" : results === null ? "Searching…" : `${total ?? results.length} ${(total ?? results.length) === 1 ? "result" : "results"}`}
      </p>
      {error && <p className="error" role="alert">{error}</p>}
      <ul className="results">
        {results?.map((m) => (
          <li key={m.id}>
            <button className="result" onClick={() => void open(m)}>
              <span className="muted small">#{state.channels[m.channel_id]?.name ?? "channel"} · {new Date(m.created_at).toLocaleString()}</span>
              <strong>{m.author.username}</strong>
              <span className="result-text">{m.content}</span>
            </button>
          </li>
        ))}
      </ul>
    </aside>
  );
}
