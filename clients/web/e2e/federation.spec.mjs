// Cross-node invites: carol has her account on a second node and joins
// alice's server (on the first node) by pasting alice's invite link into
// "Join a server"; her node dials alice's node over libp2p (loopback only).
// Run by run.mjs after the main tests, which leave alice in "E2E Club".

export const name = "cross-node invites";

export async function prepare(env) {
  const { node, browser, ctx, run, assert, shot, poll, visible, register, messageRow } = env;
  const tests = [];
  const infoA = await fetch(`${node.base}/api/node`).then((r) => r.json());
  if (!infoA.peer_id || !infoA.listen_addrs?.length) {
    return { skip: "the node runs without federation (GET /api/node has no peer addresses)", tests: [["carol joins from another node", null]] };
  }
  const nodeB = await env.startNode();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  const c = await context.newPage();
  const carol = { name: `carol_${run}`, password: "a third good password" };
  let link = null;

  tests.push(["alice's invite link carries her node's address", async () => {
    const { a } = ctx;
    await a.getByRole("button", { name: "E2E Club" }).click();
    await a.getByRole("menuitem", { name: "Invite people" }).click();
    const input = a.getByTestId("invite-link");
    link = await poll(async () => {
      const v = await input.inputValue();
      return v.includes("?peer=/ip4/127.0.0.1/") ? v : null;
    }, "the invite link never named a peer address");
    assert(link.includes(`/p2p/${infoA.peer_id}`), `the link does not end in alice's peer id: ${link}`);
    await a.getByRole("button", { name: "Close" }).click();
  }]);

  tests.push(["carol, on another node, is told in words what is wrong with bad links", async () => {
    await register(c, carol, nodeB.base);
    await visible(c.getByRole("heading", { name: "No servers yet" }));
    await c.getByRole("button", { name: "Join a server" }).first().click();
    const dialog = c.getByRole("dialog", { name: "Join a server" });
    await dialog.getByLabel("Invite link").fill(link.replace(/\?.*$/, ""));
    await dialog.getByRole("button", { name: "Join" }).click();
    await visible(dialog.getByRole("alert").filter({ hasText: /community on another node .* carries no node address/ }));
    // A code alice's node does not know: her node answers through carol's.
    await dialog.getByLabel("Invite link").fill(link.replace(/\/invite\/[^?]+/, "/invite/zzzzzzzz"));
    await dialog.getByRole("button", { name: "Join" }).click();
    await visible(dialog.getByRole("alert").filter({ hasText: /no such invite/i }));
    await shot(c, "16-join-error");
  }]);

  tests.push(["carol joins alice's server through her own node and sees its history", async () => {
    const dialog = c.getByRole("dialog", { name: "Join a server" });
    await dialog.getByLabel("Invite link").fill(link);
    await visible(dialog.getByText(/through a node address/));
    await dialog.getByRole("button", { name: "Join" }).click();
    await visible(c.getByRole("link", { name: "E2E Club" }), 30_000);
    await visible(c.getByRole("heading", { name: "#general" }));
    await shot(c, "17-cross-node-joined");
    // The history came along: her node copied the channel's messages from alice's.
    await visible(messageRow(c, "look at this picture"));
    // Only what carol may see: #secret-plans is hidden from @everyone.
    assert(!(await c.getByRole("link", { name: /^channel secret-plans/ }).count()), "carol sees a channel hidden from @everyone");
  }]);

  tests.push(["carol joins a second server from the invite page on her node; they chat live both ways", async () => {
    const { a } = ctx;
    await a.getByRole("button", { name: "Create a server" }).first().click();
    const create = a.getByRole("dialog", { name: "Create a server" });
    await create.getByLabel("Server name").fill("Bridge");
    await create.getByRole("button", { name: "Create" }).click();
    await visible(a.getByRole("heading", { name: "#general" }));
    await a.getByRole("button", { name: "Bridge" }).click();
    await a.getByRole("menuitem", { name: "Invite people" }).click();
    const input = a.getByTestId("invite-link");
    const bridgeLink = await poll(async () => {
      const v = await input.inputValue();
      return v.includes("?peer=") ? v : null;
    }, "the invite link never named a peer address");
    await a.getByRole("button", { name: "Close" }).click();
    // This time through the invite page on carol's own node: the code is unknown there, the link names alice's node.
    const url = new URL(bridgeLink);
    await c.goto(`${nodeB.base}${url.pathname}${url.search}`);
    await visible(c.getByRole("heading", { name: "An invite to another node" }));
    await shot(c, "17a-invite-to-another-node");
    await c.getByRole("button", { name: "Join through your node" }).click();
    await visible(c.getByRole("link", { name: "Bridge" }), 30_000);
    await visible(c.getByRole("heading", { name: "#general" }));
    await env.send(c, "hi alice, from the second node");
    await visible(messageRow(a, "hi alice, from the second node"), 30_000);
    await env.send(a, "hello carol, from the first node");
    await visible(messageRow(c, "hello carol, from the first node"), 30_000);
    await shot(c, "17b-cross-node-chat");
  }]);

  return {
    tests,
    pages: { a: ctx.a, c },
    logs: () => nodeB.logs.join(""),
    async cleanup() {
      await context.close();
      await nodeB.stop();
    },
  };
}
