/** Sign in and register, with the node address for pointing at any node. */
import { useState, type FormEvent } from "react";
import { describeError } from "@together/core";
import { linkHandler } from "../router.ts";
import { nodeUrl, reconnectTo, together } from "../sdk.ts";

export function AuthPage({ mode }: { mode: "login" | "register" }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [email, setEmail] = useState("");
  const [node, setNode] = useState(nodeUrl());
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const register = mode === "register";
  const search = location.search;

  async function submit(e: FormEvent) {
    e.preventDefault();
    setError(null);
    if (node.trim() && node.trim().replace(/\/+$/, "") !== nodeUrl()) {
      if (!/^https?:\/\/[^\s/]+/.test(node.trim())) {
        setError("The node address must start with http:// or https://");
        return;
      }
      reconnectTo(node.trim());
    }
    setBusy(true);
    try {
      if (register) await together.rest.register({ username: username.trim(), password, email: email.trim() || null });
      else await together.rest.login({ username: username.trim(), password });
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="auth">
      <form className="auth-card" onSubmit={submit} aria-labelledby="auth-title">
        <div className="brand" aria-hidden="true">
          <img src="/favicon.svg" alt="" width="40" height="40" />
        </div>
        <h1 id="auth-title">{register ? "Create an account" : "Welcome back"}</h1>
        <p className="muted">{register ? "Your identity key is made for you and can be exported later." : "Sign in to your Together node."}</p>
        <label>
          {register ? "Username" : "Username or email"}
          <input name="username" autoComplete="username" required value={username} onChange={(e) => setUsername(e.target.value)} autoFocus />
        </label>
        {register && (
          <label>
            Email <span className="muted">(optional)</span>
            <input name="email" type="email" autoComplete="email" value={email} onChange={(e) => setEmail(e.target.value)} />
          </label>
        )}
        <label>
          Password
          <input name="password" type="password" autoComplete={register ? "new-password" : "current-password"} required minLength={register ? 8 : undefined} value={password} onChange={(e) => setPassword(e.target.value)} />
        </label>
        <details className="node-choice">
          <summary>Node: {node.replace(/^https?:\/\//, "")}</summary>
          <label>
            Node address
            <input name="node" type="url" value={node} onChange={(e) => setNode(e.target.value)} placeholder="https://chat.example.org" />
          </label>
        </details>
        {error && <p className="error" role="alert">{error}</p>}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Please wait…" : register ? "Create account" : "Sign in"}
        </button>
        <p className="muted">
          {register ? (
            <>Already have an account? <a href={`/login${search}`} onClick={linkHandler(`/login${search}`)}>Sign in</a></>
          ) : (
            <>
              New here? <a href={`/register${search}`} onClick={linkHandler(`/register${search}`)}>Create an account</a>
              {" · "}
              <a href={`/login/key${search}`} onClick={linkHandler(`/login/key${search}`)}>Sign in with a key file</a>
            </>
          )}
        </p>
      </form>
    </main>
  );
}
