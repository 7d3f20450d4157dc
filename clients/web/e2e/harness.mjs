// The e2e harness: builds and starts a real node on a fresh database,
// serves the built web client from it, and drives Debian's Chromium with
// playwright-core. Used by run.mjs.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";

export const here = dirname(fileURLToPath(import.meta.url));
export const webDir = resolve(here, "..");
export const repo = resolve(webDir, "../..");
export const screenshotDir = join(here, "screenshots");

/** Chromium flags that work as root on a closed network: no sandbox, no GPU, no QUIC, no background network traffic. */
export const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];

export function log(...args) {
  console.log("[e2e]", ...args);
}

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** The node binary: $TOGETHER_NODE_BIN, or `cargo build -p together-node`. */
function nodeBinary() {
  if (process.env.TOGETHER_NODE_BIN) return process.env.TOGETHER_NODE_BIN;
  log("building together-node (cargo build -p together-node)");
  const build = spawnSync("cargo", ["build", "-q", "-p", "together-node"], { cwd: repo, stdio: "inherit" });
  if (build.status !== 0) throw new Error("cargo build -p together-node failed");
  const target = process.env.CARGO_TARGET_DIR ? resolve(repo, process.env.CARGO_TARGET_DIR) : join(repo, "target");
  return join(target, "debug", "together-node");
}

/** Calls the node's REST API with JSON; throws with the status and body on a non-2xx answer. */
export async function api(base, path, { token, body, method = body ? "POST" : "GET" } = {}) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(data)}`);
  return data;
}

/** The headless Rust voice participant: $TOGETHER_VOICE_BIN, or `cargo build -p together-tests --bin together-voice`. */
export function voiceBinary() {
  if (process.env.TOGETHER_VOICE_BIN) return process.env.TOGETHER_VOICE_BIN;
  log("building together-voice (cargo build -p together-tests --bin together-voice)");
  const build = spawnSync("cargo", ["build", "-q", "-p", "together-tests", "--bin", "together-voice"], { cwd: repo, stdio: "inherit" });
  if (build.status !== 0) throw new Error("cargo build --bin together-voice failed");
  const target = process.env.CARGO_TARGET_DIR ? resolve(repo, process.env.CARGO_TARGET_DIR) : join(repo, "target");
  return join(target, "debug", "together-voice");
}

function psql(url, sql) {
  return spawnSync("psql", [url, "-qtAc", sql], { encoding: "utf8" });
}

/**
 * A fresh database for this run: a new database on the PostgreSQL at
 * $E2E_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres),
 * or, when that server does not answer, the node's embedded default.
 */
function freshDatabase() {
  const admin = process.env.E2E_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const probe = psql(admin, "SELECT 1");
  if (probe.status !== 0) {
    log("no PostgreSQL at", admin.replace(/\/\/[^@]*@/, "//"), "- using the node's embedded default");
    return { url: null, drop() {} };
  }
  const name = `e2e_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  const created = psql(admin, `CREATE DATABASE ${name}`);
  if (created.status !== 0) throw new Error(`cannot create database ${name}: ${created.stderr}`);
  const url = admin.replace(/\/[^/?]*(\?|$)/, `/${name}$1`);
  return {
    url,
    drop() {
      psql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/**
 * Starts a node serving clients/web/dist; resolves when /health answers.
 * Its libp2p side listens on loopback only (QUIC), so two test nodes can
 * federate without touching any other address. `options.env` adds
 * environment variables.
 */
export async function startNode(options = {}) {
  const dist = join(webDir, "dist");
  if (!existsSync(join(dist, "index.html"))) throw new Error("clients/web/dist is missing: run `npm run build` first");
  const bin = nodeBinary();
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "together-e2e-"));
  const db = freshDatabase();
  const args = ["run", "--listen", `127.0.0.1:${port}`, "--web-dir", dist, "--data-dir", dataDir];
  if (db.url) args.push("--database-url", db.url);
  const logs = [];
  const child = spawn(bin, args, {
    env: {
      ...process.env,
      TOGETHER_RATE_LIMIT_PER_MINUTE: "0",
      TOGETHER_LOG: process.env.TOGETHER_LOG ?? "warn",
      TOGETHER_P2P_LISTEN: "/ip4/127.0.0.1/udp/0/quic-v1",
      ...(options.env ?? {}),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d) => logs.push(String(d)));
  child.stderr.on("data", (d) => logs.push(String(d)));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the node exited early:\n${logs.join("")}`);
    try {
      const res = await fetch(`${base}/health`);
      if (res.ok) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`the node did not become healthy:\n${logs.join("")}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  log("node up at", base, db.url ? "(fresh database)" : "(embedded PostgreSQL)");
  return {
    base,
    logs,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill("SIGKILL");
          r();
        }, 15_000);
        child.on("exit", () => {
          clearTimeout(t);
          r();
        });
      });
      db.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export async function launchBrowser() {
  const { chromium } = await import("playwright-core");
  const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) throw new Error(`${executablePath} is missing: apt-get install chromium`);
  return chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true });
}

/**
 * Chromium for voice tests: a fake microphone (a beeping tone), no
 * permission prompts, autoplay allowed, and loopback ICE candidates that
 * are not hidden behind mDNS names.
 */
export async function launchMediaBrowser() {
  const { chromium } = await import("playwright-core");
  const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
  return chromium.launch({
    executablePath,
    headless: false,
    ignoreDefaultArgs: ["--headless"],
    args: [
      "--headless=new", ...CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
    ],
  });
}

export function ensureScreenshotDir() {
  mkdirSync(screenshotDir, { recursive: true });
}

/** A small valid PNG (solid colour), made here so the test needs no fixture files. */
export function makePng(width = 48, height = 32, rgb = [88, 101, 242]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => rgb).flat())]);
  const raw = Buffer.concat(Array.from({ length: height }, () => row));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
