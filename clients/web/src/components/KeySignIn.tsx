/** `/login/key`: sign in with a user key file (spec/identity.md §7), signed here in the browser. */
import { useState, type FormEvent } from "react";
import { describeError, importUserKey, type UserKey } from "@together/core";
import { linkHandler } from "../router.ts";
import { together } from "../sdk.ts";
import { KEY_WARNING, forgetKey, saveKey, savedKey, shortId } from "../keys.ts";

export function KeySignIn() {
  const [stored, setStored] = useState<UserKey | null>(() => savedKey());
  const [text, setText] = useState("");
  const [fileName, setFileName] = useState<string | null>(null);
  const [username, setUsername] = useState("");
  const [remember, setRemember] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const search = location.search;

  async function signIn(key: UserKey, keep: boolean) {
    setBusy(true);
    setError(null);
    try {
      await together.rest.signInWithKey(key, username.trim() || undefined);
      if (keep) saveKey(key);
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  }

  async function onFile(file: File | undefined) {
    setError(null);
    if (!file) return;
    if (file.size > 4096) {
      setError("That file is too large to be a Together key file.");
      return;
    }
    setFileName(file.name);
    setText(await file.text());
  }

  function submit(e: FormEvent) {
    e.preventDefault();
    let key: UserKey;
    try {
      key = importUserKey(text);
    } catch (err) {
      setError(`This key cannot be used: ${describeError(err)}.`);
      return;
    }
    void signIn(key, remember);
  }

  return (
    <main className="auth">
      <div className="auth-card stack">
        <div className="brand" aria-hidden="true">
          <img src="/favicon.svg" alt="" width="40" height="40" />
        </div>
        <h1>Sign in with your key</h1>
        <p className="muted">
          Your identity key works on any Together node: it signs this node's challenge here in your browser and never
          leaves it.
        </p>
        {stored && (
          <section className="saved-key" aria-label="Key saved in this browser">
            <p>
              A key is saved in this browser for user <code>{shortId(stored.userId)}</code>.
            </p>
            <div className="row">
              <button className="primary" disabled={busy} onClick={() => signIn(stored, false)}>Sign in with the saved key</button>
              <button onClick={() => { forgetKey(); setStored(null); }}>Forget the saved key</button>
            </div>
          </section>
        )}
        <form className="stack" onSubmit={submit} aria-label="Import a key file">
          <label>
            Key file
            <input type="file" accept=".together-key,.key,.txt,text/plain" onChange={(e) => onFile(e.target.files?.[0])} />
          </label>
          <label>
            …or paste the key
            <textarea
              rows={3}
              spellCheck={false}
              autoComplete="off"
              value={text}
              onChange={(e) => { setText(e.target.value); setFileName(null); }}
              placeholder={"together-user-key-v1\n…"}
            />
          </label>
          {fileName && <p className="muted small">Read {fileName}.</p>}
          <label>
            Name on this node <span className="muted">(only the first time you sign in here)</span>
            <input name="username" value={username} onChange={(e) => setUsername(e.target.value)} autoComplete="username" />
          </label>
          <label className="check">
            <input type="checkbox" checked={remember} onChange={(e) => setRemember(e.target.checked)} />
            Keep this key in this browser
          </label>
          {remember && <p className="warning" role="note">{KEY_WARNING}</p>}
          {error && <p className="error" role="alert">{error}</p>}
          <button type="submit" className="primary" disabled={busy || !text.trim()}>
            {busy ? "Signing in…" : "Sign in with key"}
          </button>
        </form>
        <p className="muted">
          Have a password? <a href={`/login${search}`} onClick={linkHandler(`/login${search}`)}>Sign in with your password</a>
        </p>
      </div>
    </main>
  );
}
