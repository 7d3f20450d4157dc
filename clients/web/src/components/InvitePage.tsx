/**
 * `/invite/<code>[?peer=…]`: what the invite leads to, and joining it. An
 * invite of a community on another node (peer addresses in the link, code
 * unknown here) is redeemed through this node with a federated join.
 */
import { useEffect, useMemo, useState } from "react";
import { ApiError, describeError, parseInviteLink, type Invite, type InviteLink } from "@together/core";
import { channelPath, linkHandler, navigate } from "../router.ts";
import { together } from "../sdk.ts";
import { joinWithLink } from "../join.ts";

export function InvitePage({ code, signedIn }: { code: string; signedIn: boolean }) {
  const [invite, setInvite] = useState<Invite | null>(null);
  const [remote, setRemote] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const link = useMemo<InviteLink>(() => {
    try {
      return parseInviteLink(location.href);
    } catch {
      return { code, peers: [], origin: null };
    }
  }, [code]);

  useEffect(() => {
    let live = true;
    together.rest.getInvite(code).then(
      (i) => live && setInvite(i),
      (e) => {
        if (!live) return;
        // Not known here, but the link says where the community lives.
        if (e instanceof ApiError && e.status === 404 && link.peers.length) setRemote(true);
        else setError(describeError(e));
      },
    );
    return () => {
      live = false;
    };
  }, [code, link]);

  async function accept() {
    setBusy(true);
    setError(null);
    try {
      const server = remote ? await joinWithLink({ ...link, origin: null }) : await together.rest.acceptInvite(code);
      navigate(channelPath(server.id, invite?.channel_id ?? null));
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  const next = encodeURIComponent(`/invite/${code}${location.search}`);
  const signInLinks = (
    <>
      <a className="button primary" href={`/register?next=${next}`} onClick={linkHandler(`/register?next=${next}`)}>Create an account to join</a>
      <p className="muted">Have an account? <a href={`/login?next=${next}`} onClick={linkHandler(`/login?next=${next}`)}>Sign in</a></p>
    </>
  );
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
            ) : signInLinks}
            {!signedIn && link.peers.length > 0 && (
              <p className="muted small">
                Your account is on another node? Sign in there, choose <strong>Join a server</strong> and paste this page's address.
              </p>
            )}
          </>
        ) : remote ? (
          <>
            <h1 id="invite-title">An invite to another node</h1>
            <p className="muted">This invite is for a community hosted on another Together node. Your node can join it for you.</p>
            {signedIn ? (
              <button className="primary" onClick={accept} disabled={busy}>{busy ? "Joining through your node…" : "Join through your node"}</button>
            ) : signInLinks}
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
