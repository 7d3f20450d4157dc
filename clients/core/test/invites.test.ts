import { describe, expect, it } from "vitest";
import { InviteLinkError, formatInviteLink, invitePeers, parseInviteLink, peerIdOf, planJoin } from "../src/index.ts";

const PEER_ID = "12D3KooWGzXtrD1p5cvTZmLxhYJq9fzsx1ZDPRGcWxyHBEvGbzAf";
const QUIC = `/ip4/203.0.113.7/udp/4001/quic-v1/p2p/${PEER_ID}`;
const TCP = `/ip4/203.0.113.7/tcp/4001/p2p/${PEER_ID}`;
const OTHER_ID = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";

describe("parseInviteLink", () => {
  it("reads a plain link of this node", () => {
    expect(parseInviteLink("http://127.0.0.1:8080/invite/Ab3dEf9h")).toEqual({ code: "Ab3dEf9h", peers: [], origin: "http://127.0.0.1:8080" });
  });

  it("reads peers from repeated, comma-separated and encoded parameters", () => {
    const raw = `https://home.example/invite/Ab3dEf9h?peer=${QUIC}&peer=${TCP}`;
    expect(parseInviteLink(raw)).toEqual({ code: "Ab3dEf9h", peers: [QUIC, TCP], origin: "https://home.example" });
    const encoded = `https://home.example/invite/Ab3dEf9h?peers=${encodeURIComponent(`${QUIC},${TCP}`)}`;
    expect(parseInviteLink(encoded).peers).toEqual([QUIC, TCP]);
    expect(parseInviteLink(`https://home.example/invite/Ab3dEf9h/#peer=${QUIC}`).peers).toEqual([QUIC]);
  });

  it("reads what people paste around a link", () => {
    expect(parseInviteLink(`  https://home.example/invite/Ab3dEf9h?peer=${QUIC}/ \n`).peers).toEqual([QUIC]);
    expect(parseInviteLink(`together://invite/Ab3dEf9h?peer=${QUIC}`)).toEqual({ code: "Ab3dEf9h", peers: [QUIC], origin: null });
    expect(parseInviteLink("Ab3dEf9h")).toEqual({ code: "Ab3dEf9h", peers: [], origin: null });
    expect(parseInviteLink(`Ab3dEf9h ${QUIC}`)).toEqual({ code: "Ab3dEf9h", peers: [QUIC], origin: null });
    expect(parseInviteLink(`Ab3dEf9h@${QUIC}`)).toEqual({ code: "Ab3dEf9h", peers: [QUIC], origin: null });
    // The same address twice counts once.
    expect(parseInviteLink(`https://h.example/invite/Ab3dEf9h?peer=${QUIC}&peers=${QUIC}`).peers).toEqual([QUIC]);
  });

  it("explains what is wrong in words", () => {
    expect(() => parseInviteLink("")).toThrow(/paste an invite link/);
    expect(() => parseInviteLink("https://home.example/channels")).toThrow(InviteLinkError);
    expect(() => parseInviteLink("https://home.example/invite/a")).toThrow(/not an invite code/);
    expect(() => parseInviteLink("https://home.example/invite/Ab3dEf9h?peer=/ip4/203.0.113.7/tcp/4001")).toThrow(/must end in \/p2p\/<peer id>/);
    expect(() => parseInviteLink("https://home.example/invite/Ab3dEf9h?peer=home.example:4001")).toThrow(/not a node address/);
    expect(() => parseInviteLink(QUIC)).toThrow(/invite code is missing/);
    expect(() => parseInviteLink("http://[bad/invite/x")).toThrow(/cannot be read/);
  });

  it("round-trips the links this client makes", () => {
    const link = formatInviteLink("https://home.example/", "Ab3dEf9h", [QUIC, TCP]);
    expect(link.startsWith("https://home.example/invite/Ab3dEf9h?peer=/ip4/")).toBe(true);
    expect(parseInviteLink(link)).toEqual({ code: "Ab3dEf9h", peers: [QUIC, TCP], origin: "https://home.example" });
    expect(formatInviteLink("https://home.example", "Ab3dEf9h")).toBe("https://home.example/invite/Ab3dEf9h");
  });
});

describe("invitePeers", () => {
  it("puts reachable addresses first, drops wildcards and addresses without a peer id", () => {
    const loop = `/ip4/127.0.0.1/udp/4001/quic-v1/p2p/${PEER_ID}`;
    const list = invitePeers([loop, `/ip4/0.0.0.0/udp/4001/quic-v1/p2p/${PEER_ID}`, "/ip4/203.0.113.7/tcp/4001", QUIC, TCP]);
    expect(list).toEqual([QUIC, TCP, loop]);
    expect(invitePeers([loop])).toEqual([loop]);
    expect(peerIdOf(QUIC)).toBe(PEER_ID);
  });
});

describe("planJoin", () => {
  const here = { origin: "https://mine.example", peerId: OTHER_ID };

  it("redeems a link of another node through a peer", () => {
    expect(planJoin(parseInviteLink(`https://home.example/invite/Ab3dEf9h?peer=${QUIC}`), here)).toEqual({
      kind: "remote", code: "Ab3dEf9h", peers: [QUIC],
    });
    expect(planJoin(parseInviteLink(`Ab3dEf9h ${QUIC}`), here).kind).toBe("remote");
  });

  it("redeems a link of this node here", () => {
    expect(planJoin(parseInviteLink("https://mine.example/invite/Ab3dEf9h"), here)).toEqual({ kind: "local", code: "Ab3dEf9h" });
    expect(planJoin(parseInviteLink("Ab3dEf9h"), here)).toEqual({ kind: "local", code: "Ab3dEf9h" });
    const own = `/ip4/198.51.100.1/udp/1/quic-v1/p2p/${OTHER_ID}`;
    expect(planJoin(parseInviteLink(`https://elsewhere.example/invite/Ab3dEf9h?peer=${own}`), here).kind).toBe("local");
    expect(planJoin(parseInviteLink(`https://mine.example/invite/Ab3dEf9h?peer=${QUIC}`), here).kind).toBe("local");
  });

  it("says why a link of another node without an address cannot work", () => {
    expect(() => planJoin(parseInviteLink("https://home.example/invite/Ab3dEf9h"), here)).toThrow(/another node \(home\.example\)/);
  });
});
