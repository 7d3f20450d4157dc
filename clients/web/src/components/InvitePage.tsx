/** `/invite/<code>`: what the invite leads to, and joining it. */
import { useEffect, useState } from "react";
import { describeError, type Invite } from "@together/core";
import { channelPath, linkHandler, navigate } from "../router.ts";
import { together } from "../sdk.ts";

export function InvitePage({ code, signedIn }: { code: string; signedIn: boolean }) {
  const [invite, setInvite] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    let live = true;
    together.rest.getInvite(code).then(
      (i) => live && setInvite(i),
      (e) => live && setError(describeError(e)),
    );
    return () => {
      live = false;
    };
  }, [code]);

  async function accept() {
    setBusy(true);
    setError(null);
    try {
      const server = await together.rest.acceptInvite(code);
      navigate(channelPath(server.id, invite?.channel_id ?? null));
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  const next = encodeURIComponent(`/invite/${code}`);
  return (
    <main className="auth">
      <section className="auth-card" aria-labelledby="invite-title">
        {invite ? (
          <>
            <p className="muted">You have been invited to join</p>
            <div className="invite-server">
              <span className="server-icon large" aria-hidden="true">{initials(invite.server.name)}</span>
              <h1 id="invite-title">{invite.server.name}</h1>
            </div>
            <p className="muted">{invite.server.member_count} {invite.server.member_count === 1 ? "member" : "members"}</p>
            {signedIn ? (
              <button className="primary" onClick={accept} disabled={busy}>{busy ? "Joining…" : "Accept invite"}</button>
            ) : (
              <>
                <a className="button primary" href={`/register?next=${next}`} onClick={linkHandler(`/register?next=${next}`)}>Create an account to join</a>
                <p className="muted">Have an account? <a href={`/login?next=${next}`} onClick={linkHandler(`/login?next=${next}`)}>Sign in</a></p>
              </>
            )}
          </>
        ) : (
          <h1 id="invite-title">{error ? "This invite does not work" : "Loading invite…"}</h1>
        )}
        {error && <p className="error" role="alert">{error}</p>}
        {signedIn && <a href="/channels" onClick={linkHandler("/channels")}>Back to your servers</a>}
      </section>
    </main>
  );
}

export function initials(name: string): string {
  return name.split(/\s+/).filter(Boolean).slice(0, 3).map((w) => [...w][0]).join("").toUpperCase() || "?";
}
