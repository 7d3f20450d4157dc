/**
 * User keys, canonical bytes and signatures of spec/identity.md, for key
 * sign-in from a browser: unpadded base64url, the key file, the user id
 * derived from a public key, delegations and the sign-in proof. Pure
 * functions over bytes; no network. `test/identity.test.ts` checks every
 * test vector of spec/identity.md §9 byte for byte.
 *
 * Signing is RFC 8032 ed25519 (@noble/ed25519, deterministic), hashing is
 * BLAKE3 (@noble/hashes), so the same code runs in any browser and in Node.
 */
import * as ed from "@noble/ed25519";
import { blake3 } from "@noble/hashes/blake3.js";
import { sha512 } from "@noble/hashes/sha2.js";

// Synchronous signing needs a SHA-512; take the audited one rather than WebCrypto's async one.
ed.hashes.sha512 = sha512;

/** Domain tags (spec/identity.md §3); each ends in one 0x00 byte. */
export const TAGS = {
  delegation: "together/v1/delegation\0",
  revocation: "together/v1/revocation\0",
  signIn: "together/v1/sign-in\0",
  event: (kind: string) => `together/v1/event/${kind}\0`,
} as const;

export const KEY_FILE_HEADER = "together-user-key-v1";

/** A key, nonce or signature that cannot be read; the message says which and why. */
export class IdentityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IdentityError";
  }
}

// ---- encodings ----

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64URL_INDEX = new Map([...B64URL].map((c, i) => [c, i]));

/** Unpadded base64url (RFC 4648 §5). */
export function base64urlEncode(bytes: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63] + B64URL[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63];
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63];
  }
  return out;
}

/**
 * Decodes unpadded base64url strictly, as the spec demands: no padding, no
 * `+` or `/`, no whitespace, zero trailing bits, and (when given) exactly
 * `length` bytes. `what` names the value in the error.
 */
export function base64urlDecode(text: string, what = "value", length?: number): Uint8Array {
  const bad = () => new IdentityError(`${what} is not unpadded base64url`);
  if (text.length % 4 === 1) throw bad();
  const bits: number[] = [];
  for (const c of text) {
    const v = B64URL_INDEX.get(c);
    if (v === undefined) throw bad();
    bits.push(v);
  }
  const out = new Uint8Array(Math.floor((text.length * 6) / 8));
  let acc = 0;
  let nbits = 0;
  let o = 0;
  for (const v of bits) {
    acc = (acc << 6) | v;
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out[o++] = (acc >> nbits) & 0xff;
    }
  }
  if (nbits > 0 && (acc & ((1 << nbits) - 1)) !== 0) throw bad();
  if (length !== undefined && out.length !== length) {
    throw new IdentityError(`${what} must be ${length} bytes, not ${out.length}`);
  }
  return out;
}

/** Standard base64 with padding (what `POST /api/users/@me/key` answers), to bytes. */
export function base64Decode(text: string, what = "value"): Uint8Array {
  const clean = text.trim();
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0) throw new IdentityError(`${what} is not base64`);
  return base64urlDecode(clean.replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_"), what);
}

export function hexEncode(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function hexDecode(text: string, what = "value"): Uint8Array {
  if (!/^([0-9a-fA-F]{2})*$/.test(text)) throw new IdentityError(`${what} is not hex`);
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const ascii = (s: string) => new TextEncoder().encode(s);

/** An `i64` big-endian in two's complement (8 bytes). */
export function i64(value: number | bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigInt64(0, BigInt(value), false);
  return out;
}

/** A `u64` big-endian (8 bytes). */
function u64(value: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value), false);
  return out;
}

function fixed(bytes: Uint8Array, length: number, what: string): Uint8Array {
  if (bytes.length !== length) throw new IdentityError(`${what} must be ${length} bytes, not ${bytes.length}`);
  return bytes;
}

// ---- canonical bytes (spec/identity.md §4–§7) ----

export function delegationCanonical(user: Uint8Array, node: Uint8Array, issued: number, expires: number): Uint8Array {
  return concat(fixed(user, 32, "user public key"), fixed(node, 32, "node public key"), i64(issued), i64(expires));
}

export function revocationCanonical(user: Uint8Array, delegationHash: Uint8Array, issued: number): Uint8Array {
  return concat(fixed(user, 32, "user public key"), fixed(delegationHash, 32, "delegation hash"), i64(issued));
}

export function signInCanonical(node: Uint8Array, nonce: Uint8Array, issued: number): Uint8Array {
  return concat(fixed(node, 32, "node public key"), fixed(nonce, 32, "nonce"), i64(issued));
}

export function eventCanonical(node: Uint8Array, delegationHash: Uint8Array, payload: Uint8Array): Uint8Array {
  return concat(fixed(node, 32, "node public key"), fixed(delegationHash, 32, "delegation hash"), u64(payload.length), payload);
}

/** What is signed: the tag followed by the canonical bytes. */
export function signingInput(tag: string, canonical: Uint8Array): Uint8Array {
  return concat(ascii(tag), canonical);
}

/** The hash of a signed object: `blake3(tag || canonical || signature)`. */
export function signedHash(tag: string, canonical: Uint8Array, signature: Uint8Array): Uint8Array {
  return blake3(concat(ascii(tag), canonical, fixed(signature, 64, "signature")));
}

/** The user id of a public key (spec/identity.md §1), as a UUID string. */
export function userIdOf(publicKey: Uint8Array): string {
  const b = blake3(fixed(publicKey, 32, "user public key"), { context: ascii("together user id v1") }).slice(0, 16);
  b[6] = (b[6] & 0x0f) | 0x80;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = hexEncode(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---- keys ----

/** A user's identity key: its 32-byte seed, public key and derived user id. */
export class UserKey {
  readonly seed: Uint8Array;
  readonly publicKey: Uint8Array;
  readonly userId: string;

  private constructor(seed: Uint8Array) {
    this.seed = Uint8Array.from(fixed(seed, 32, "user key seed"));
    this.publicKey = ed.getPublicKey(this.seed);
    this.userId = userIdOf(this.publicKey);
  }

  static fromSeed(seed: Uint8Array): UserKey {
    return new UserKey(seed);
  }

  /** A new random key (WebCrypto's random source). */
  static generate(): UserKey {
    return new UserKey(crypto.getRandomValues(new Uint8Array(32)));
  }

  /** The public key as unpadded base64url, as JSON carries it. */
  get publicKeyText(): string {
    return base64urlEncode(this.publicKey);
  }

  /** Signs `tag || canonical` (RFC 8032, deterministic). */
  sign(tag: string, canonical: Uint8Array): Uint8Array {
    return ed.sign(signingInput(tag, canonical), this.seed);
  }

  /** The key file text (spec/identity.md §8). */
  toKeyFile(): string {
    return formatKeyFile(this.seed);
  }
}

/** Checks an ed25519 signature (RFC 8032 with a canonical `s`). */
export function verifySignature(publicKey: Uint8Array, tag: string, canonical: Uint8Array, signature: Uint8Array): boolean {
  try {
    return ed.verify(signature, signingInput(tag, canonical), publicKey, { zip215: false });
  } catch {
    return false;
  }
}

export function formatKeyFile(seed: Uint8Array): string {
  return `${KEY_FILE_HEADER}\n${base64urlEncode(fixed(seed, 32, "user key seed"))}\n`;
}

/** Reads a key file: the header line, then the seed line; `\r\n` and whitespace around lines are fine. */
export function parseKeyFile(text: string): UserKey {
  const lines = text.trim().split(/\r?\n/).map((l) => l.trim());
  if (lines[0] !== KEY_FILE_HEADER) throw new IdentityError(`this is not a Together key file: the first line must be ${KEY_FILE_HEADER}`);
  if (lines.length < 2) throw new IdentityError("the key file has no seed line");
  if (lines.length > 2) throw new IdentityError("the key file has unexpected lines after the seed");
  return UserKey.fromSeed(base64urlDecode(lines[1], "the key file's seed", 32));
}

/** A key as a person might paste it: a whole key file, or just its seed line. */
export function importUserKey(text: string): UserKey {
  const t = text.trim();
  if (t.startsWith(KEY_FILE_HEADER)) return parseKeyFile(t);
  return UserKey.fromSeed(base64urlDecode(t, "the key", 32));
}

/**
 * The key of `POST /api/users/@me/key` (`secret_key` standard base64 of
 * the seed, `public_key` hex), checked against each other.
 */
export function keyFromExport(exported: { user_id?: string; public_key: string; secret_key: string }): UserKey {
  const key = UserKey.fromSeed(base64Decode(exported.secret_key, "the exported secret key"));
  if (hexEncode(key.publicKey) !== exported.public_key.toLowerCase()) {
    throw new IdentityError("the exported secret key does not match its public key");
  }
  if (exported.user_id && exported.user_id !== key.userId) {
    throw new IdentityError("the exported key belongs to another user id");
  }
  return key;
}

// ---- signed objects ----

export interface SignedDelegation {
  delegation: { user: string; node: string; issued: number; expires: number };
  signature: string;
}

/** The user allows `node` to act for them from `issued` up to `expires` (unix seconds). */
export function signDelegation(key: UserKey, node: Uint8Array, issued: number, expires: number): SignedDelegation {
  if (!(issued < expires)) throw new IdentityError("a delegation must expire after it is issued");
  const signature = key.sign(TAGS.delegation, delegationCanonical(key.publicKey, node, issued, expires));
  return {
    delegation: { user: key.publicKeyText, node: base64urlEncode(node), issued, expires },
    signature: base64urlEncode(signature),
  };
}

/** The hash of a signed delegation, by which events and revocations refer to it. */
export function delegationHash(d: SignedDelegation): Uint8Array {
  const canonical = delegationCanonical(
    base64urlDecode(d.delegation.user, "delegation user", 32),
    base64urlDecode(d.delegation.node, "delegation node", 32),
    d.delegation.issued,
    d.delegation.expires,
  );
  return signedHash(TAGS.delegation, canonical, base64urlDecode(d.signature, "delegation signature", 64));
}

/** `POST /api/auth/challenge`'s answer. */
export interface SignInChallenge {
  node: string;
  nonce: string;
  issued: number;
  expires_in?: number;
}

/** The body of `POST /api/auth/verify`. */
export interface SignInRequest {
  nonce: string;
  public_key: string;
  signature: string;
  delegation: SignedDelegation;
  username?: string;
}

/** How long the delegation made at sign-in lasts (30 days), and how far it reaches back for clock skew. */
export const SIGN_IN_DELEGATION_SECS = 30 * 86_400;
const CLOCK_SKEW_SECS = 60;

/**
 * Answers a sign-in challenge (spec/identity.md §7): the signature over
 * `node || nonce || issued` and a fresh delegation to that node.
 */
export function signInProof(key: UserKey, challenge: SignInChallenge, now = Math.floor(Date.now() / 1000), username?: string): SignInRequest {
  const node = base64urlDecode(challenge.node, "the node's key", 32);
  const nonce = base64urlDecode(challenge.nonce, "the challenge nonce", 32);
  if (!Number.isSafeInteger(challenge.issued)) throw new IdentityError("the challenge has no valid issue time");
  const signature = key.sign(TAGS.signIn, signInCanonical(node, nonce, challenge.issued));
  const body: SignInRequest = {
    nonce: challenge.nonce,
    public_key: key.publicKeyText,
    signature: base64urlEncode(signature),
    delegation: signDelegation(key, node, now - CLOCK_SKEW_SECS, now + SIGN_IN_DELEGATION_SECS),
  };
  if (username) body.username = username;
  return body;
}
