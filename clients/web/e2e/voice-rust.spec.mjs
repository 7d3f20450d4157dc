// Voice interop: gina, in Chromium with its fake microphone (a beeping
// tone), and rusty, the headless Rust participant `together-voice` (the
// `webrtc` crate, sending a real Opus tone), join one voice channel of the
// node. Chromium's getStats() shows inbound-rtp packets from rusty's section
// growing (the connection-info panel lists them per person); rusty reports
// packets from gina arriving and decoding to audio that is not silent. Then
// rusty leaves on SIGTERM, cleanly, and gina sees him go.
//
// The binary is $TOGETHER_VOICE_BIN, else built with
// `cargo build -p together-tests --bin together-voice`.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { api, voiceBinary } from "./harness.mjs";

export const name = "voice-rust";

const TEST_NAMES = [
  "gina (Chromium) and rusty (Rust webrtc client) join one voice channel",
  "Chromium receives rusty's audio: inbound-rtp packetsReceived grows for his section",
  "rusty receives gina's audio and decodes it to sound",
  "rusty leaves on SIGTERM: a clean leave, and gina sees him go",
];

/** Starts the Rust participant; collects its JSON lines. */
function startRust(bin, args, password) {
  const child = spawn(bin, args, { env: { ...process.env, TOGETHER_PASSWORD: password }, stdio: ["ignore", "pipe", "pipe"] });
  const events = [];
  const log = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    log.push(line);
    try {
      events.push(JSON.parse(line));
    } catch {
      /* not JSON: kept in the log */
    }
  });
  child.stderr.on("data", (d) => log.push(String(d).trimEnd()));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return {
    child,
    events,
    log,
    exited,
    latest: (kind) => events.filter((e) => e.event === kind).at(-1),
  };
}

export async function prepare(env) {
  const { node, run, assert, poll, visible, gone, shot } = env;
  const base = node.base;
  const gina = { name: `gina_${run}`, password: "voice interop password 1" };
  const rusty = { name: `rusty_${run}`, password: "voice interop password 2" };
  const ginaAuth = await api(base, "/api/auth/register", { body: { username: gina.name, password: gina.password } });
  const rustyAuth = await api(base, "/api/auth/register", { body: { username: rusty.name, password: rusty.password } });
  const server = await api(base, "/api/servers", { token: ginaAuth.access_token, body: { name: "Interop Hall" } });
  const channels = await api(base, `/api/servers/${server.id}/channels`, { token: ginaAuth.access_token });
  const general = channels.find((ch) => ch.kind === "voice");
  assert(general, "a new server has no voice channel");
  const invite = await api(base, `/api/servers/${server.id}/invites`, { token: ginaAuth.access_token, body: {} });
  await api(base, `/api/invites/${invite.code}`, { token: rustyAuth.access_token, body: {} });
  const ginaId = ginaAuth.user.id;
  const rustyId = rustyAuth.user.id;

  const bin = voiceBinary();
  const browser = await env.launchMediaBrowser();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
  const page = await context.newPage();
  let rust = null;
  const cleanup = async () => {
    if (rust && rust.child.exitCode === null) rust.child.kill("SIGKILL");
    await context.close().catch(() => undefined);
    await browser.close().catch(() => undefined);
  };

  const tile = (who) => page.getByRole("list", { name: `In ${general.name}` }).getByRole("listitem", { name: new RegExp(`^${who.name}\\b`) });
  const fromRusty = async () => {
    const details = page.locator("details.connection-info");
    if (!(await details.evaluate((el) => el.open))) await details.locator("summary").click();
    const cell = page.getByTestId(`voice-packets-from-${rustyId}`);
    return (await cell.count()) ? Number(await cell.textContent()) : -1;
  };
  const heardGina = () => rust?.latest("stats")?.from?.[ginaId];

  const tests = [
    [TEST_NAMES[0], async () => {
      await page.goto(`${base}/login`);
      await page.getByLabel("Username or email").fill(gina.name);
      await page.getByLabel("Password").fill(gina.password);
      await page.getByRole("button", { name: "Sign in" }).click();
      await visible(page.getByRole("link", { name: "Interop Hall" }));
      await page.getByRole("link", { name: "Interop Hall" }).click();
      await page.getByRole("link", { name: `voice channel ${general.name}` }).click();
      await page.getByRole("button", { name: "Join voice" }).click();
      await visible(page.getByRole("status").filter({ hasText: "Voice connected" }), 20_000);

      rust = startRust(bin, [
        "--node", base, "--username", rusty.name, "--channel", general.id,
        "--seconds", "120", "--tone-hz", "440", "--report-ms", "500",
      ], rusty.password);
      await poll(async () => {
        const failed = rust.latest("error");
        if (failed) throw new Error(`together-voice failed: ${failed.message}`);
        return rust.latest("joined");
      }, "together-voice did not join", 30_000);
      assert(rust.latest("joined").user_id === rustyId, "together-voice joined as someone else");
      await visible(tile(rusty), 20_000);
      await poll(async () => rust.latest("stats")?.state === "connected", "the Rust client's media connection did not come up", 20_000);
    }],
    [TEST_NAMES[1], async () => {
      const first = await poll(async () => {
        const n = await fromRusty();
        return n > 0 ? n : null;
      }, "Chromium lists no inbound packets from rusty", 20_000);
      await poll(async () => (await fromRusty()) > first + 50, `Chromium's inbound packets from rusty stopped at ${first}`, 10_000);
      await shot(page, "20-voice-rust-interop");
    }],
    [TEST_NAMES[2], async () => {
      const first = await poll(async () => (heardGina()?.packets ?? 0) > 0 && heardGina(), "rusty received no packets from gina", 20_000);
      await poll(async () => heardGina().packets > first.packets + 50, `rusty's packets from gina stopped at ${first.packets}`, 10_000);
      const heard = heardGina();
      assert(heard.frames >= heard.packets - 5 && heard.decode_errors === 0, `gina's packets did not decode as Opus: ${JSON.stringify(heard)}`);
      await poll(async () => heardGina().voiced_frames >= 5, "gina's audio decoded to silence only", 15_000);
    }],
    [TEST_NAMES[3], async () => {
      rust.child.kill("SIGTERM");
      const { code, signal } = await Promise.race([
        rust.exited,
        new Promise((_, reject) => setTimeout(() => reject(new Error("together-voice did not exit within 10 s of SIGTERM")), 10_000)),
      ]);
      assert(code === 0, `together-voice exited with ${code ?? signal}`);
      const left = rust.latest("left");
      assert(left?.reason === "left", `together-voice did not leave cleanly: ${JSON.stringify(rust.events.at(-1))}`);
      const last = rust.latest("stats");
      console.log(`  [voice-rust] rusty heard gina: ${JSON.stringify(last.from[ginaId])}; sent ${last.sent}`);
      await gone(tile(rusty));
    }],
  ];
  return { tests, pages: { g: page }, cleanup, logs: () => (rust ? rust.log.join("\n") : "together-voice was not started") };
}
