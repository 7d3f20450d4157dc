// End-to-end tests of the web client against a real node, in a real
// browser: two people in two browser contexts register, create a server,
// invite and join, chat live both ways, react, edit, reply, delete, upload
// a picture, search, and lose sight of a channel when its permissions
// change; export their key and sign in with it. Then the specs beside this
// file: cross-node invites (federation.spec.mjs, a second node) and voice
// (voice.spec.mjs) and voice between Chromium and the Rust WebRTC client
// `together-voice` (voice-rust.spec.mjs). Prints `N passed, M failed, K
// skipped` last and exits non-zero on failure.
//
// A skip is a failure, everywhere (not only in CI): a spec that skips itself
// has found the node lacking what it tests, and a run that ran no step at
// all (say, an E2E_ONLY naming no spec) has tested nothing. Either exits 1.
//
//   npm run build && node e2e/run.mjs
//   TOGETHER_NODE_BIN=path/to/together-node  skips `cargo build`
//   TOGETHER_VOICE_BIN=path/to/together-voice  likewise for voice-rust
//   E2E_ONLY=voice,voice-rust  runs only these specs (not the main tests)
import { ensureScreenshotDir, launchBrowser, launchMediaBrowser, log, makePng, screenshotDir, startNode } from "./harness.mjs";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as federationSpec from "./federation.spec.mjs";
import * as voiceSpec from "./voice.spec.mjs";
import * as voiceRustSpec from "./voice-rust.spec.mjs";

const T = 15_000; // how long a person would wait for something to appear
const results = [];
let node;
let browser;
const run = `${Date.now().toString(36).slice(-5)}`;
const alice = { name: `alice_${run}`, password: "correct horse battery" };
const bob = { name: `bob_${run}`, password: "another good password" };
const ctx = {};

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: join(screenshotDir, `${name}.png`), fullPage: false });
}

async function poll(fn, message, timeout = T) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${message} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

const visible = (locator, timeout = T) => locator.first().waitFor({ state: "visible", timeout });
const gone = (locator, timeout = T) => locator.first().waitFor({ state: "hidden", timeout });

function channelLink(page, name) {
  return page.getByRole("link", { name: new RegExp(`^channel ${name}(, unread)?$`) });
}

function messageRow(page, text) {
  return page.locator("article.message", { hasText: text });
}

async function register(page, user, base = node.base) {
  await page.goto(`${base}/register`);
  await page.getByLabel("Username").fill(user.name);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Create account" }).click();
}

async function send(page, text) {
  const box = page.getByRole("textbox", { name: /^Message #/ });
  await box.fill(text);
  await box.press("Enter");
  await visible(messageRow(page, text));
}

const tests = [
  ["a wrong password is refused in words", async () => {
    const { a } = ctx;
    await a.goto(`${node.base}/login`);
    await a.getByLabel("Username or email").fill("nobody_here");
    await a.getByLabel("Password").fill("wrong password");
    await a.getByRole("button", { name: "Sign in" }).click();
    const alert = a.getByRole("alert");
    await visible(alert);
    const text = await alert.textContent();
    assert(/wrong username or password/i.test(text ?? ""), `expected the node's explanation, got "${text}"`);
    await shot(a, "01-sign-in-error");
  }],

  ["alice and bob register and see the empty home", async () => {
    await register(ctx.a, alice);
    await register(ctx.b, bob);
    await visible(ctx.a.getByRole("heading", { name: "No servers yet" }));
    await visible(ctx.b.getByRole("heading", { name: "No servers yet" }));
    await shot(ctx.b, "02-empty-home");
  }],

  ["the refresh token is an HttpOnly cookie, not in the page's storage", async () => {
    const { a } = ctx;
    const stored = await a.evaluate(() => JSON.parse(localStorage.getItem("together.tokens") ?? "null"));
    assert(stored?.access_token && stored.refresh_token === "", `local storage holds a refresh token: ${JSON.stringify(stored)}`);
    const cookie = (await a.context().cookies()).find((c) => c.name === "together_refresh");
    assert(cookie?.httpOnly && cookie.sameSite === "Strict" && cookie.path === "/api/auth", `no HttpOnly refresh cookie: ${JSON.stringify(cookie)}`);
    assert(!(await a.evaluate(() => document.cookie)).includes("together_refresh"), "scripts can read the refresh cookie");
    // The browser sends it back: a refresh works and rotates it.
    const status = await a.evaluate(async () => (await fetch("/api/auth/refresh", {
      method: "POST",
      headers: { "content-type": "application/json", "together-refresh-cookie": "1" },
      body: JSON.stringify({ refresh_token: "" }),
    })).status);
    assert(status === 200, `a refresh with the cookie answered ${status}`);
    const rotated = (await a.context().cookies()).find((c) => c.name === "together_refresh");
    assert(rotated && rotated.value !== cookie.value, "the cookie was not rotated");
  }],

  ["alice creates a server and lands in #general", async () => {
    const { a } = ctx;
    await a.getByRole("button", { name: "Create a server" }).first().click();
    const dialog = a.getByRole("dialog", { name: "Create a server" });
    await dialog.getByLabel("Server name").fill("E2E Club");
    await dialog.getByRole("button", { name: "Create" }).click();
    await visible(a.getByRole("button", { name: "E2E Club" }));
    await visible(a.getByRole("heading", { name: "#general" }));
    await visible(a.getByRole("link", { name: "E2E Club" }));
  }],

  ["alice invites bob; bob joins through the invite page", async () => {
    const { a, b } = ctx;
    await a.getByRole("button", { name: "E2E Club" }).click();
    await a.getByRole("menuitem", { name: "Invite people" }).click();
    const input = a.getByTestId("invite-link");
    const link = await poll(async () => {
      const v = await input.inputValue();
      return v.includes("/invite/") ? v : null;
    }, "the invite link never appeared");
    await shot(a, "03-invite-dialog");
    await a.getByRole("button", { name: "Close" }).click();
    await b.goto(link);
    await visible(b.getByRole("heading", { name: "E2E Club" }));
    await visible(b.getByText(/1 member/));
    await shot(b, "04-invite-page");
    await b.getByRole("button", { name: "Accept invite" }).click();
    await visible(b.getByRole("heading", { name: "#general" }));
  }],

  ["alice sees bob arrive, online, in the member list", async () => {
    // Listed under Online: his presence reaches alice although he was online before joining.
    await visible(ctx.a.locator("aside.members section", { has: ctx.a.getByRole("heading", { name: /^Online/ }) }).getByText(bob.name));
  }],

  ["messages appear live both ways", async () => {
    const { a, b } = ctx;
    await send(a, "hello bob, welcome!");
    await visible(messageRow(b, "hello bob, welcome!"));
    await send(b, "hi alice, glad to be here");
    await visible(messageRow(a, "hi alice, glad to be here"));
  }],

  ["alice sees that bob is typing", async () => {
    const { a, b } = ctx;
    await b.getByRole("textbox", { name: /^Message #/ }).pressSequentially("typing something", { delay: 10 });
    await visible(a.getByText(`${bob.name} is typing…`));
    await shot(a, "05-chat-typing");
    await b.getByRole("textbox", { name: /^Message #/ }).fill("");
  }],

  ["bob reacts and alice sees the count", async () => {
    const { a, b } = ctx;
    const row = messageRow(b, "hello bob, welcome!");
    await row.hover();
    await row.getByRole("button", { name: "Add reaction" }).click();
    await row.getByRole("button", { name: "React with 👍" }).click();
    await visible(row.getByRole("button", { name: /👍 1 reaction, including yours/ }));
    await visible(messageRow(a, "hello bob, welcome!").getByRole("button", { name: /^👍 1 reaction$/ }));
  }],

  ["alice edits her message and bob sees the new text", async () => {
    const { a, b } = ctx;
    const row = messageRow(a, "hello bob, welcome!");
    await row.hover();
    await row.getByRole("button", { name: "Edit message" }).click();
    const box = a.getByRole("textbox", { name: "Edit message" });
    await box.fill("hello bob, welcome to the club!");
    await box.press("Enter");
    await visible(messageRow(b, "hello bob, welcome to the club!").getByText("(edited)"));
    // The reaction survived the edit.
    await visible(messageRow(b, "welcome to the club").getByRole("button", { name: /👍 1/ }));
  }],

  ["bob replies and alice sees what it answers", async () => {
    const { a, b } = ctx;
    const row = messageRow(b, "welcome to the club");
    await row.hover();
    await row.getByRole("button", { name: "Reply" }).click();
    await visible(b.getByText(`Replying to ${alice.name}`));
    await send(b, "thanks, happy to join");
    await visible(messageRow(a, "thanks, happy to join").getByText(`replying to ${alice.name}`, { exact: false }));
  }],

  ["alice deletes a message and it disappears for bob", async () => {
    const { a, b } = ctx;
    await send(a, "this one was a mistake");
    await visible(messageRow(b, "this one was a mistake"));
    const row = messageRow(a, "this one was a mistake");
    await row.hover();
    await row.getByRole("button", { name: "Delete message" }).click();
    await a.getByRole("dialog", { name: "Delete message" }).getByRole("button", { name: "Delete" }).click();
    await gone(messageRow(a, "this one was a mistake"));
    await gone(messageRow(b, "this one was a mistake"));
  }],

  ["alice uploads a picture with progress; bob sees the preview", async () => {
    const { a, b } = ctx;
    await a.locator('input[type="file"]').setInputFiles({ name: "pixels.png", mimeType: "image/png", buffer: makePng() });
    await visible(a.getByRole("list", { name: "Attachments" }).getByText("pixels.png"));
    await poll(async () => (await a.getByRole("list", { name: "Attachments" }).textContent())?.includes("ready"), "the upload never finished");
    const box = a.getByRole("textbox", { name: /^Message #/ });
    await box.fill("look at this picture");
    await box.press("Enter");
    const img = messageRow(b, "look at this picture").getByRole("img", { name: "pixels.png" });
    await visible(img);
    const width = await poll(() => img.evaluate((el) => el.complete && el.naturalWidth), "the image did not load");
    assert(width === 48, `expected a 48 px wide image, got ${width}`);
    await shot(b, "06-chat-with-image");
  }],

  ["a new channel appears for bob and is marked unread", async () => {
    const { a, b } = ctx;
    await a.getByRole("button", { name: "E2E Club" }).click();
    await a.getByRole("menuitem", { name: "Create channel" }).click();
    const dialog = a.getByRole("dialog", { name: "Create channel" });
    await dialog.getByLabel("Channel name").fill("secret-plans");
    await dialog.getByRole("button", { name: "Create" }).click();
    await visible(a.getByRole("heading", { name: "#secret-plans" }));
    await visible(channelLink(b, "secret-plans"));
    await send(a, "the plan is ready");
    await visible(b.getByRole("link", { name: "channel secret-plans, unread" }));
    await shot(b, "07-unread-channel");
    await channelLink(b, "secret-plans").click();
    await visible(messageRow(b, "the plan is ready"));
    await visible(b.getByRole("link", { name: "channel secret-plans" }));
    await channelLink(b, "general").click();
    await visible(b.getByRole("heading", { name: "#general" }));
  }],

  ["bob finds a message with search", async () => {
    const { b } = ctx;
    await b.getByRole("searchbox", { name: "Search messages" }).fill("picture");
    await b.getByRole("searchbox", { name: "Search messages" }).press("Enter");
    const panel = b.getByRole("complementary", { name: "Search results" });
    await visible(panel.getByText("look at this picture"));
    await shot(b, "08-search");
    await panel.getByRole("button", { name: "Close search" }).click();
  }],

  ["an override denying @everyone hides the channel from bob", async () => {
    const { a, b } = ctx;
    await a.getByRole("button", { name: "Edit channel secret-plans" }).click();
    const dialog = a.getByRole("dialog", { name: /Channel settings: secret-plans/ });
    await dialog.getByRole("tab", { name: "Permissions" }).click();
    await dialog.getByLabel("Override for").selectOption({ label: "@everyone" });
    await dialog.getByRole("radio", { name: "View channels: deny" }).check();
    await shot(a, "09-channel-permissions");
    await dialog.getByRole("button", { name: "Save permissions" }).click();
    await visible(dialog.getByText("Permissions saved."));
    await dialog.getByRole("button", { name: "Close" }).click();
    await gone(channelLink(b, "secret-plans"));
    // The owner still sees it.
    await visible(channelLink(a, "secret-plans"));
  }],

  ["a role with an allow override shows it to bob again", async () => {
    const { a, b } = ctx;
    await a.getByRole("button", { name: "E2E Club" }).click();
    await a.getByRole("menuitem", { name: "Server settings" }).click();
    const dialog = a.getByRole("dialog", { name: "E2E Club settings" });
    await dialog.getByRole("tab", { name: "Roles" }).click();
    await dialog.getByRole("button", { name: "Create role" }).click();
    const editor = dialog.getByRole("form", { name: "Edit role new role" });
    await editor.getByLabel("Role name").fill("planners");
    await editor.getByRole("button", { name: "Save role" }).click();
    await visible(dialog.getByRole("button", { name: /planners/ }));
    await dialog.getByRole("tab", { name: "Members" }).click();
    const row = dialog.locator("li.member-row", { hasText: bob.name });
    await row.getByRole("checkbox", { name: "planners" }).check();
    await poll(() => row.getByRole("checkbox", { name: "planners" }).isChecked(), "the role was not assigned");
    await shot(a, "10-server-settings-members");
    await dialog.getByRole("button", { name: "Close" }).click();

    await a.getByRole("button", { name: "Edit channel secret-plans" }).click();
    const ch = a.getByRole("dialog", { name: /Channel settings: secret-plans/ });
    await ch.getByRole("tab", { name: "Permissions" }).click();
    await ch.getByLabel("Override for").selectOption({ label: "planners" });
    await ch.getByRole("radio", { name: "View channels: allow" }).check();
    await ch.getByRole("button", { name: "Save permissions" }).click();
    await visible(ch.getByText("Permissions saved."));
    await ch.getByRole("button", { name: "Close" }).click();
    await visible(channelLink(b, "secret-plans"));
  }],

  ["the layout works at phone width and in the dark theme", async () => {
    const { b } = ctx;
    await b.setViewportSize({ width: 390, height: 780 });
    await visible(b.getByRole("heading", { name: "#general" }));
    const menu = b.getByRole("button", { name: "Open menu" });
    await visible(menu);
    await gone(b.getByRole("complementary", { name: "Members" }));
    await visible(b.getByRole("textbox", { name: /^Message #/ }));
    await b.waitForTimeout(400); // let the drawer's slide-out finish before the picture
    await shot(b, "11-phone-chat");
    await menu.click();
    await visible(channelLink(b, "general"));
    await b.waitForTimeout(400);
    await shot(b, "12-phone-drawer");
    await b.keyboard.press("Escape");
    await gone(channelLink(b, "general"));
    await b.setViewportSize({ width: 1280, height: 800 });
    await b.getByRole("button", { name: /Change theme/ }).click();
    const theme = await b.evaluate(() => document.documentElement.dataset.theme);
    assert(theme === "dark", `expected the dark theme, got ${theme}`);
    await shot(b, "13-dark-theme");
  }],

  ["alice kicks bob and the server disappears for him", async () => {
    const { a, b } = ctx;
    await a.getByRole("button", { name: "E2E Club" }).click();
    await a.getByRole("menuitem", { name: "Server settings" }).click();
    const dialog = a.getByRole("dialog", { name: "E2E Club settings" });
    await dialog.getByRole("tab", { name: "Members" }).click();
    await dialog.getByRole("button", { name: `Kick ${bob.name}` }).click();
    await a.getByRole("dialog", { name: `Kick ${bob.name}?` }).getByRole("button", { name: "Kick" }).click();
    await gone(b.getByRole("link", { name: "E2E Club" }));
    await visible(b.getByRole("heading", { name: "No servers yet" }));
    await gone(dialog.locator("li.member-row", { hasText: bob.name }));
    await dialog.getByRole("button", { name: "Close" }).click();
  }],

  ["alice exports her key; a wrong password is refused in words", async () => {
    const { a } = ctx;
    await a.getByRole("button", { name: "Identity key" }).click();
    const dialog = a.getByRole("dialog", { name: "Your identity key" });
    await dialog.getByLabel("Password").fill("not my password");
    await dialog.getByRole("button", { name: "Export key" }).click();
    await visible(dialog.getByRole("alert").filter({ hasText: /wrong password/i }));
    await dialog.getByLabel("Password").fill(alice.password);
    await dialog.getByRole("button", { name: "Export key" }).click();
    await visible(dialog.getByText("User id"));
    const id = await dialog.locator("code").first().textContent();
    const meId = await a.evaluate(() => fetch("/api/users/@me", {
      headers: { authorization: `Bearer ${JSON.parse(localStorage.getItem("together.tokens")).access_token}` },
    }).then((r) => r.json()).then((u) => u.id));
    assert(id === meId, `the exported key's user id ${id} is not alice's id ${meId}`);
    await shot(a, "14-identity-key");
    const [download] = await Promise.all([a.waitForEvent("download"), dialog.getByRole("button", { name: "Download key file" }).click()]);
    ctx.keyDir = mkdtempSync(join(tmpdir(), "together-key-"));
    ctx.keyFile = join(ctx.keyDir, download.suggestedFilename());
    await download.saveAs(ctx.keyFile);
    const text = readFileSync(ctx.keyFile, "utf8");
    assert(/^together-user-key-v1\n[A-Za-z0-9_-]{43}\n$/.test(text), `the key file does not look like spec/identity.md §8: ${JSON.stringify(text.slice(0, 30))}`);
    await dialog.getByRole("button", { name: "Close" }).click();
  }],

  ["alice signs out, signs in with the key file and sees the same servers", async () => {
    const { a } = ctx;
    await a.getByRole("button", { name: "Sign out" }).click();
    await visible(a.getByRole("heading", { name: "Welcome back" }));
    await a.getByRole("link", { name: "Sign in with a key file" }).click();
    await visible(a.getByRole("heading", { name: "Sign in with your key" }));
    await a.getByLabel("Key file", { exact: true }).setInputFiles(ctx.keyFile);
    await visible(a.getByText(/^Read .*together-key\.$/));
    await a.getByLabel("Keep this key in this browser").check();
    await visible(a.getByRole("note").filter({ hasText: /unencrypted in this browser's storage/ }));
    await shot(a, "15-key-sign-in");
    await a.getByRole("button", { name: "Sign in with key" }).click();
    await visible(a.getByRole("link", { name: "E2E Club" }));
    await channelLink(a, "general").click();
    await visible(messageRow(a, "look at this picture"));
  }],

  ["the key kept in the browser signs alice in with one click", async () => {
    const { a } = ctx;
    await a.getByRole("button", { name: "Sign out" }).click();
    await visible(a.getByRole("heading", { name: "Welcome back" }));
    await a.getByRole("link", { name: "Sign in with a key file" }).click();
    await a.getByRole("button", { name: "Sign in with the saved key" }).click();
    await visible(a.getByRole("link", { name: "E2E Club" }));
    rmSync(ctx.keyDir, { recursive: true, force: true });
  }],
];

async function main() {
  ensureScreenshotDir();
  node = await startNode();
  browser = await launchBrowser();
  const pageErrors = [];
  for (const key of ["a", "b"]) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
    const page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(`${key}: ${e.message}`));
    // The node's Content-Security-Policy must not block anything the client does.
    page.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) pageErrors.push(`${key}: ${m.text()}`);
    });
    ctx[key] = page;
  }
  let failedBefore = false;
  const only = process.env.E2E_ONLY ? process.env.E2E_ONLY.split(",").map((s) => s.trim()) : null;
  for (const [name, fn] of only ? [] : tests) {
    if (failedBefore) {
      results.push({ name, ok: false, error: "not run: an earlier step failed" });
      console.log(`  SKIP ${name}`);
      continue;
    }
    const started = Date.now();
    try {
      await fn();
      results.push({ name, ok: true });
      console.log(`  ok   ${name} (${Date.now() - started} ms)`);
    } catch (e) {
      failedBefore = true;
      results.push({ name, ok: false, error: e.message });
      console.log(`  FAIL ${name}: ${e.message.split("\n")[0]}`);
      for (const [key, page] of Object.entries(ctx)) await shot(page, `failure-${key}`).catch(() => undefined);
    }
  }
  const env = {
    node, browser, ctx, alice, bob, run, T, startNode, launchMediaBrowser,
    assert, shot, poll, visible, gone, register, send, messageRow, channelLink,
  };
  for (const spec of [federationSpec, voiceSpec, voiceRustSpec]) {
    if (!only || only.includes(spec.name)) await runSpec(spec, env, failedBefore);
  }
  if (pageErrors.length) {
    results.push({ name: "no uncaught errors in the pages", ok: false, error: pageErrors.join("; ") });
    console.log(`  FAIL no uncaught errors in the pages: ${pageErrors.join("; ")}`);
  }
}

/** Runs one spec file's tests; a spec may skip itself with a reason (e.g. a feature the node lacks). */
async function runSpec(spec, env, failedBefore) {
  if (failedBefore) {
    results.push({ name: spec.name, ok: false, error: "not run: an earlier step failed" });
    console.log(`  SKIP ${spec.name}: an earlier step failed`);
    return;
  }
  let prepared;
  try {
    prepared = await spec.prepare(env);
  } catch (e) {
    results.push({ name: `${spec.name}: set-up`, ok: false, error: e.message });
    console.log(`  FAIL ${spec.name}: set-up: ${e.message.split("\n")[0]}`);
    return;
  }
  try {
    if (prepared.skip) {
      for (const [name] of prepared.tests) results.push({ name, skipped: true });
      console.log(`  SKIP ${spec.name} (${prepared.tests.length} tests): ${prepared.skip}`);
      return;
    }
    let failed = false;
    for (const [name, fn] of prepared.tests) {
      if (failed) {
        results.push({ name, ok: false, error: "not run: an earlier step failed" });
        console.log(`  SKIP ${name}`);
        continue;
      }
      const started = Date.now();
      try {
        await fn();
        results.push({ name, ok: true });
        console.log(`  ok   ${name} (${Date.now() - started} ms)`);
      } catch (e) {
        failed = true;
        results.push({ name, ok: false, error: e.message });
        console.log(`  FAIL ${name}: ${e.message.split("\n")[0]}`);
        for (const [key, page] of Object.entries(prepared.pages ?? {})) await shot(page, `failure-${spec.name.replace(/\W+/g, "-")}-${key}`).catch(() => undefined);
        if (prepared.logs) console.log(`[e2e] ${spec.name} log tail:\n${prepared.logs().split("\n").slice(-30).join("\n")}`);
      }
    }
  } finally {
    await prepared.cleanup?.().catch(() => undefined);
  }
}

let crashed = null;
try {
  await main();
} catch (e) {
  crashed = e;
  console.error("[e2e] could not run:", e.message);
} finally {
  await browser?.close().catch(() => undefined);
  if (results.some((r) => !r.ok && !r.skipped) && node) console.log("[e2e] node log tail:\n" + node.logs.join("").split("\n").slice(-30).join("\n"));
  await node?.stop().catch(() => undefined);
}
const passed = results.filter((r) => r.ok).length;
const skipped = results.filter((r) => r.skipped).length;
const failed = results.length - passed - skipped + (crashed ? Math.max(1, tests.length - results.length) : 0);
log(`screenshots in ${screenshotDir}`);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
if (skipped > 0) console.log(`[e2e] ${skipped} skipped: a skip is a failure`);
if (passed === 0) console.log("[e2e] no step ran: a run that tests nothing is a failure");
process.exit(failed > 0 || crashed || skipped > 0 || passed === 0 ? 1 : 0);
