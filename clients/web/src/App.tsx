/** The top of the app: signed out → sign-in pages; signed in → the chat shell. */
import { useEffect } from "react";
import { AuthPage } from "./components/AuthPage.tsx";
import { InvitePage } from "./components/InvitePage.tsx";
import { KeySignIn } from "./components/KeySignIn.tsx";
import { Shell } from "./components/Shell.tsx";
import { navigate, parseRoute, usePath } from "./router.ts";
import { together, useTokens } from "./sdk.ts";

export function App() {
  const path = usePath();
  const tokens = useTokens();
  const route = parseRoute(path);
  const signedIn = tokens !== null;

  // Connect the gateway while signed in.
  useEffect(() => {
    if (!signedIn) return;
    together.start();
    return () => together.stop();
  }, [signedIn]);

  useEffect(() => {
    if (!signedIn && route.name === "channels") {
      const next = path === "/" || path === "/channels" ? "" : `?next=${encodeURIComponent(path)}`;
      navigate(`/login${next}`, true);
    }
    if (signedIn && (route.name === "login" || route.name === "key-login" || route.name === "register")) {
      const next = new URLSearchParams(location.search).get("next");
      navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/channels", true);
    }
  }, [signedIn, route.name, path]);

  if (route.name === "invite") return <InvitePage code={route.code} signedIn={signedIn} />;
  if (!signedIn && route.name === "key-login") return <KeySignIn />;
  if (!signedIn) return <AuthPage mode={route.name === "register" ? "register" : "login"} />;
  if (route.name !== "channels") return null;
  return <Shell serverId={route.serverId} channelId={route.channelId} />;
}
