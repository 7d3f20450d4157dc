// Voice: dave and erin, in two browser contexts with Chromium's fake
// microphone (a beeping tone), join the "General" voice channel of a new
// server, see each other listed and speaking, and receive each other's audio
// (the connection's inbound packet counter grows). Then mute and leave.
//
// A probe first sends op 4 VOICE_STATE_UPDATE on a gateway session of its
// own. A node that closes the session with 4001 (unknown opcode) or 4002
// (decode error) instead has broken the voice contract of spec/voice.md:
// that fails the set-up, and with it every test of this file.

import { api } from "./harness.mjs";

export const name = "voice";

const TEST_NAMES = [
  "dave and erin join a voice channel and see each other",
  "each sees the other speaking and receives their audio",
  "erin switches microphones while connected and keeps sending",
  "erin deafens: dave sees it, and her page silences the others",
  "dave mutes: erin sees it and the speaking ring goes out",
  "dave leaves: erin sees him go",
];

/** Asks the node to join a voice channel on a gateway session of its own; says how it answered. */
function probe(page, token, serverId, channelId) {
  return page.evaluate(({ token, serverId, channelId }) => new Promise((resolve) => {
    const ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/gateway`);
    const state = (ch) => JSON.stringify({ op: 4, d: { server_id: serverId, channel_id: ch, self_mute: false, self_deaf: false } });
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      try {
        ws.send(state(null));
      } catch {
        /* already closed */
      }
      setTimeout(() => ws.close(), 300);
      resolve(result);
    };
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      if (f.op === 10) ws.send(JSON.stringify({ op: 2, d: { token } }));
      else if (f.op === 0 && f.t === "READY") ws.send(state(channelId));
      else if (f.op === 0 && (f.t === "VOICE_OFFER" || f.t === "VOICE_STATE_UPDATE")) finish("supported");
    };
    ws.onclose = (ev) => {
      if (!done) {
        done = true;
        resolve(`closed ${ev.code}`);
      }
    };
    setTimeout(() => finish("no answer"), 8000);
  }), { token, serverId, channelId });
}

export async function prepare(env) {
  const { node, run, assert, shot, poll, visible, gone } = env;
  const base = node.base;
  const dave = { name: `dave_${run}`, password: "voice test password 1" };
  const erin = { name: `erin_${run}`, password: "voice test password 2" };
  const daveAuth = await api(base, "/api/auth/register", { body: { username: dave.name, password: dave.password } });
  const erinAuth = await api(base, "/api/auth/register", { body: { username: erin.name, password: erin.password } });
  const server = await api(base, "/api/servers", { token: daveAuth.access_token, body: { name: "Voice Club" } });
  const channels = await api(base, `/api/servers/${server.id}/channels`, { token: daveAuth.access_token });
  const general = channels.find((ch) => ch.kind === "voice");
  assert(general, "a new server has no voice channel");
  const invite = await api(base, `/api/servers/${server.id}/invites`, { token: daveAuth.access_token, body: {} });
  await api(base, `/api/invites/${invite.code}`, { token: erinAuth.access_token, body: {} });

  const browser = await env.launchMediaBrowser();
  const pages = {};
  const contexts = [];
  for (const key of ["d", "e"]) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
    contexts.push(context);
    pages[key] = await context.newPage();
  }
  const cleanup = async () => {
    for (const c of contexts) await c.close().catch(() => undefined);
    await browser.close().catch(() => undefined);
  };

  await pages.d.goto(`${base}/login`);
  const answer = await probe(pages.d, daveAuth.access_token, server.id, general.id);
  if (answer === "closed 4001" || answer === "closed 4002") {
    await cleanup();
    throw new Error(`the node answered op 4 VOICE_STATE_UPDATE by closing the gateway (${answer}); spec/voice.md says it joins the voice channel`);
  }

  const tile = (page, who) => page.getByRole("list", { name: `In ${general.name}` }).getByRole("listitem", { name: new RegExp(`^${who.name}\\b`) });
  const label = async (page, who) => (await tile(page, who).getAttribute("aria-label")) ?? "";

  async function signInAndOpen(page, who) {
    await page.goto(`${base}/login`);
    await page.getByLabel("Username or email").fill(who.name);
    await page.getByLabel("Password").fill(who.password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await visible(page.getByRole("link", { name: "Voice Club" }));
    await page.getByRole("link", { name: "Voice Club" }).click();
    await page.getByRole("link", { name: `voice channel ${general.name}` }).click();
    await visible(page.getByRole("heading", { name: `🔊 ${general.name}` }));
  }

  const counter = async (page, which) => {
    const details = page.locator("details.connection-info");
    if (!(await details.evaluate((el) => el.open))) await details.locator("summary").click();
    return Number(await page.getByTestId(`voice-packets-${which}`).textContent());
  };
  const packetsReceived = (page) => counter(page, "received");
  const controls = (page) => page.getByRole("group", { name: "Voice controls" });

  const tests = [
    [TEST_NAMES[0], async () => {
      for (const [key, who] of [["d", dave], ["e", erin]]) {
        const page = pages[key];
        await signInAndOpen(page, who);
        await page.getByRole("button", { name: "Join voice" }).click();
        await visible(page.getByRole("status").filter({ hasText: "Voice connected" }), 20_000);
      }
      await visible(tile(pages.d, erin));
      await visible(tile(pages.e, dave));
      // The channel list shows them too.
      await visible(pages.e.getByRole("list", { name: `In voice channel ${general.name}` }).getByRole("listitem", { name: new RegExp(`^${dave.name}`) }));
    }],
    [TEST_NAMES[1], async () => {
      await poll(async () => /speaking/.test(await label(pages.d, erin)), "dave never saw erin speaking", 20_000);
      await poll(async () => /speaking/.test(await label(pages.e, dave)), "erin never saw dave speaking", 20_000);
      await shot(pages.e, "18-voice-speaking");
      for (const key of ["d", "e"]) {
        const first = await packetsReceived(pages[key]);
        await poll(async () => (await packetsReceived(pages[key])) > first + 20, `${key}: inbound audio packets stopped at ${first}`, 10_000);
      }
    }],
    [TEST_NAMES[2], async () => {
      const e = pages.e;
      const select = e.getByLabel("Microphone");
      // Device names are shown once the microphone is allowed.
      const options = await select.locator("option").evaluateAll((os) => os.map((o) => ({ value: o.value, label: o.textContent })));
      const real = options.filter((o) => o.value);
      assert(real.length >= 1 && real.every((o) => o.label && !/^Microphone \d+$/.test(o.label)), `no named microphones listed: ${JSON.stringify(options)}`);
      await select.selectOption(real[real.length - 1].value);
      const sent = await counter(e, "sent");
      await poll(async () => (await counter(e, "sent")) > sent + 20, "erin stopped sending after switching microphones", 10_000);
      await poll(async () => /speaking/.test(await label(pages.d, erin)), "dave no longer hears erin after her switch", 20_000);
    }],
    [TEST_NAMES[3], async () => {
      await controls(pages.e).getByRole("button", { name: "Deafen" }).click();
      await visible(controls(pages.e).getByRole("button", { name: "Undeafen" }));
      await poll(async () => /deafened/.test(await label(pages.d, erin)), "dave does not see erin deafened");
      const mutedAudio = await pages.e.locator("audio").evaluateAll((els) => els.length > 0 && els.every((el) => el.muted));
      assert(mutedAudio, "erin's page still plays the others while deafened");
      await controls(pages.e).getByRole("button", { name: "Undeafen" }).click();
      await poll(async () => !/deafened/.test(await label(pages.d, erin)), "dave still sees erin deafened");
    }],
    [TEST_NAMES[4], async () => {
      await controls(pages.d).getByRole("button", { name: "Mute" }).click();
      await poll(async () => {
        const l = await label(pages.e, dave);
        return /muted/.test(l) && !/speaking/.test(l);
      }, "erin does not see dave muted and silent");
      await shot(pages.d, "19-voice-muted");
    }],
    [TEST_NAMES[5], async () => {
      await controls(pages.d).getByRole("button", { name: "Leave voice" }).click();
      await visible(pages.d.getByRole("button", { name: "Join voice" }));
      await gone(tile(pages.e, dave));
    }],
  ];
  return { tests, pages, cleanup };
}
