/**
 * The account's identity key: export it (the node checks the password
 * again), download it as a key file, and optionally keep it in this browser.
 */
import { useState, type FormEvent } from "react";
import { ApiError, describeError, keyFromExport, type UserKey } from "@together/core";
import { together } from "../sdk.ts";
import { KEY_WARNING, downloadKeyFile, forgetKey, saveKey, savedKey } from "../keys.ts";
import { Dialog } from "./Dialog.tsx";

export function IdentityKeyDialog({ onClose }: { onClose: () => void }) {
  const me = together.store.getState().me;
  const [password, setPassword] = useState("");
  const [key, setKey] = useState<UserKey | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [stored, setStored] = useState(() => {
    const k = savedKey();
    return k && me && k.userId === me.id ? k : null;
  });

  async function exportKey(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const exported = await together.rest.exportKey(password);
      setKey(keyFromExport(exported));
      setPassword("");
    } catch (err) {
      if (err instanceof ApiError && err.code === "no_stored_key") {
        setError(stored
          ? "This node does not hold your key (you signed in with your own key). The key saved in this browser is below."
          : "This node does not hold your key: you signed in with your own key file. Keep using that file.");
      } else {
        setError(describeError(err));
      }
    } finally {
      setBusy(false);
    }
  }

  const shown = key ?? stored;
  const name = me?.username ?? "together";
  return (
    <Dialog title="Your identity key" onClose={onClose}>
      <div className="stack">
        <p className="muted">
          Your identity key is your account on every Together node. With the key file you can sign in on any node,
          and keep your servers if this node goes away.
        </p>
        {!key && (
          <form className="stack" onSubmit={exportKey} aria-label="Export your key">
            <label>
              Password
              <input type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} autoFocus />
            </label>
            <div className="dialog-actions">
              <button type="submit" className="primary" disabled={busy || !password}>{busy ? "Checking…" : "Export key"}</button>
            </div>
          </form>
        )}
        {error && <p className="error" role="alert">{error}</p>}
        {shown && (
          <section className="stack" aria-label="Key">
            <p>
              User id <code>{shown.userId}</code>
            </p>
            <p className="warning" role="note">Anyone with this key can act as you everywhere. Never share it.</p>
            <div className="row">
              <button className="primary" onClick={() => downloadKeyFile(shown, name)}>Download key file</button>
              {stored ? (
                <button onClick={() => { forgetKey(); setStored(null); }}>Forget the key saved in this browser</button>
              ) : (
                <button onClick={() => { saveKey(shown); setStored(shown); }}>Keep in this browser</button>
              )}
            </div>
            <p className="muted small">{stored ? "The key is saved in this browser. " : "If you keep it in this browser: "}{KEY_WARNING}</p>
          </section>
        )}
      </div>
    </Dialog>
  );
}
