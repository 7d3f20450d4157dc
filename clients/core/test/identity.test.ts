import { describe, expect, it } from "vitest";
import spec from "../../../spec/identity.md?raw";
import {
  IdentityError, TAGS, UserKey, base64Decode, base64urlDecode, base64urlEncode, delegationCanonical, delegationHash,
  eventCanonical, formatKeyFile, hexDecode, hexEncode, importUserKey, keyFromExport, parseKeyFile, revocationCanonical,
  signDelegation, signInCanonical, signInProof, signedHash, userIdOf, verifySignature,
} from "../src/index.ts";

/** The `vectors` block of spec/identity.md §9, read from the spec itself so the two cannot drift apart. */
function vectors(): Record<string, string> {
  const block = spec.split("```vectors")[1]?.split("```")[0];
  if (!block) throw new Error("spec/identity.md has no vectors block");
  const out: Record<string, string> = {};
  for (const line of block.trim().split("\n")) {
    const i = line.indexOf("=");
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

const v = vectors();
const hex = (k: string) => hexDecode(v[k], k);
const num = (k: string) => Number(v[k]);
const user = UserKey.fromSeed(hex("user.seed"));
const node = UserKey.fromSeed(hex("node.seed"));

describe("spec/identity.md test vectors", () => {
  it("has all of them", () => {
    expect(Object.keys(v)).toHaveLength(28);
  });

  it("derives public keys, their text and the user id", () => {
    expect(hexEncode(user.publicKey)).toBe(v["user.public_key"]);
    expect(user.publicKeyText).toBe(v["user.public_key.base64url"]);
    expect(user.userId).toBe(v["user.id"]);
    expect(userIdOf(user.publicKey)).toBe(v["user.id"]);
    expect(hexEncode(node.publicKey)).toBe(v["node.public_key"]);
    expect(base64urlEncode(node.publicKey)).toBe(v["node.public_key.base64url"]);
  });

  it("signs and hashes the delegation byte for byte", () => {
    const canonical = delegationCanonical(user.publicKey, node.publicKey, num("delegation.issued"), num("delegation.expires"));
    expect(hexEncode(canonical)).toBe(v["delegation.canonical"]);
    const signature = user.sign(TAGS.delegation, canonical);
    expect(hexEncode(signature)).toBe(v["delegation.signature"]);
    expect(hexEncode(signedHash(TAGS.delegation, canonical, signature))).toBe(v["delegation.hash"]);
    const signed = signDelegation(user, node.publicKey, num("delegation.issued"), num("delegation.expires"));
    // Same JSON text, same key order, as the node writes it.
    expect(JSON.stringify(signed)).toBe(v["delegation.json"]);
    expect(hexEncode(delegationHash(signed))).toBe(v["delegation.hash"]);
    expect(verifySignature(user.publicKey, TAGS.delegation, canonical, signature)).toBe(true);
  });

  it("signs and hashes the revocation", () => {
    const canonical = revocationCanonical(user.publicKey, hex("delegation.hash"), num("revocation.issued"));
    expect(hexEncode(canonical)).toBe(v["revocation.canonical"]);
    const signature = user.sign(TAGS.revocation, canonical);
    expect(hexEncode(signature)).toBe(v["revocation.signature"]);
    expect(hexEncode(signedHash(TAGS.revocation, canonical, signature))).toBe(v["revocation.hash"]);
  });

  it("signs the sign-in challenge", () => {
    const canonical = signInCanonical(node.publicKey, hex("sign_in.nonce"), num("sign_in.issued"));
    expect(hexEncode(canonical)).toBe(v["sign_in.canonical"]);
    expect(hexEncode(user.sign(TAGS.signIn, canonical))).toBe(v["sign_in.signature"]);
  });

  it("signs and hashes the event with the node key", () => {
    const payload = hex("event.payload");
    expect(new TextDecoder().decode(payload)).toBe("hello, together");
    const canonical = eventCanonical(node.publicKey, hex("delegation.hash"), payload);
    expect(hexEncode(canonical)).toBe(v["event.canonical"]);
    const tag = TAGS.event(v["event.kind"]);
    const signature = node.sign(tag, canonical);
    expect(hexEncode(signature)).toBe(v["event.signature"]);
    expect(hexEncode(signedHash(tag, canonical, signature))).toBe(v["event.hash"]);
    const json = {
      kind: v["event.kind"], node: node.publicKeyText, delegation: base64urlEncode(hex("delegation.hash")),
      payload: base64urlEncode(payload), signature: base64urlEncode(signature),
    };
    expect(JSON.stringify(json)).toBe(v["event.json"]);
  });

  it("writes and reads the key file", () => {
    const text = formatKeyFile(user.seed);
    expect(text).toBe(`together-user-key-v1\n${v["key_file.seed_line"]}\n`);
    expect(user.toKeyFile()).toBe(text);
    expect(parseKeyFile(text).userId).toBe(v["user.id"]);
    expect(parseKeyFile(`  together-user-key-v1 \r\n ${v["key_file.seed_line"]}\r\n\r\n`).userId).toBe(v["user.id"]);
    expect(importUserKey(v["key_file.seed_line"]).userId).toBe(v["user.id"]);
  });
});

describe("sign-in proof", () => {
  it("answers a challenge the way the node checks it", () => {
    const challenge = { node: node.publicKeyText, nonce: base64urlEncode(hex("sign_in.nonce")), issued: num("sign_in.issued"), expires_in: 60 };
    const now = num("sign_in.issued") + 5;
    const proof = signInProof(user, challenge, now, "alice");
    expect(proof.signature).toBe(base64urlEncode(hex("sign_in.signature")));
    expect(proof.public_key).toBe(v["user.public_key.base64url"]);
    expect(proof.nonce).toBe(challenge.nonce);
    expect(proof.username).toBe("alice");
    const d = proof.delegation.delegation;
    expect(d.node).toBe(v["node.public_key.base64url"]);
    expect(d.user).toBe(v["user.public_key.base64url"]);
    expect(d.issued).toBeLessThanOrEqual(now);
    expect(d.expires).toBeGreaterThan(now);
    const canonical = delegationCanonical(user.publicKey, node.publicKey, d.issued, d.expires);
    expect(verifySignature(user.publicKey, TAGS.delegation, canonical, base64urlDecode(proof.delegation.signature))).toBe(true);
  });

  it("refuses a challenge with a malformed nonce", () => {
    expect(() => signInProof(user, { node: node.publicKeyText, nonce: "AAAA", issued: 1 })).toThrow(/nonce must be 32 bytes/);
  });
});

describe("encodings", () => {
  it("round-trips base64url at every length", () => {
    for (let n = 0; n < 40; n++) {
      const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 0xff);
      const text = base64urlEncode(bytes);
      expect(text).not.toMatch(/[=+/]/);
      expect(base64urlDecode(text)).toEqual(bytes);
    }
  });

  it("rejects every other text form, as the spec demands", () => {
    const good = v["user.public_key.base64url"];
    expect(() => base64urlDecode(`${good}=`)).toThrow(IdentityError);
    expect(() => base64urlDecode(v["node.public_key.base64url"].replace("-", "+"))).toThrow(IdentityError);
    expect(base64urlDecode(v["node.public_key.base64url"])).toEqual(node.publicKey);
    expect(() => base64urlDecode(` ${good}`)).toThrow(IdentityError);
    // "iojj…b1w": the last char carries trailing bits; "b1x" would set a non-zero one.
    expect(() => base64urlDecode(`${good.slice(0, -1)}x`)).toThrow(/not unpadded base64url/);
    expect(() => base64urlDecode(good, "key", 31)).toThrow(/must be 31 bytes/);
    expect(() => base64urlDecode("A")).toThrow(IdentityError);
  });

  it("reads the node's key export and checks it against its public key", () => {
    const exported = { user_id: user.userId, public_key: hexEncode(user.publicKey), secret_key: btoa(String.fromCharCode(...user.seed)) };
    expect(base64Decode(exported.secret_key)).toEqual(user.seed);
    expect(keyFromExport(exported).userId).toBe(v["user.id"]);
    expect(() => keyFromExport({ ...exported, public_key: hexEncode(node.publicKey) })).toThrow(/does not match/);
  });

  it("explains bad key files in words", () => {
    expect(() => parseKeyFile("hello\nworld\n")).toThrow(/not a Together key file/);
    expect(() => parseKeyFile("together-user-key-v1\n")).toThrow(/no seed line/);
    expect(() => parseKeyFile(`together-user-key-v1\n${v["key_file.seed_line"]}\nextra\n`)).toThrow(/unexpected lines/);
    expect(() => parseKeyFile("together-user-key-v1\nAQID\n")).toThrow(/32 bytes/);
  });
});
