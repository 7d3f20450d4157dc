import { describe, expect, it } from "vitest";
import { channelTree, initialState, isUnread, reduce, typingUsers, type Action, type Dispatch, type State } from "../src/index.ts";
import { ALICE, BOB, GENERAL, ME, SERVER_ID, channel, member, message, readyServer } from "./fixtures.ts";

const d = (event: Dispatch, now?: number): Action => ({ type: "dispatch", event, now });
const run = (state: State, ...actions: Action[]) => actions.reduce(reduce, state);
const ready = (): State => reduce(initialState, d({ t: "READY", d: { v: 1, session_id: "s1", user: ME, servers: [readyServer()] } }));

describe("READY", () => {
  it("fills servers, channels, roles, own membership and presences", () => {
    const s = ready();
    expect(s.me?.username).toBe("alice");
    expect(s.sessionId).toBe("s1");
    expect(Object.keys(s.servers)).toEqual([SERVER_ID]);
    expect(s.servers[SERVER_ID].memberCount).toBe(2);
    expect(s.channels[GENERAL].name).toBe("general");
    expect(s.presences[BOB.id].status).toBe("online");
    expect(s.members[SERVER_ID][ME.id].user.username).toBe("alice");
  });

  it("a second READY drops servers and history the user no longer sees", () => {
    let s = run(ready(), d({ t: "MESSAGE_CREATE", d: message(BOB, "hi") }));
    s = reduce(s, d({ t: "READY", d: { v: 1, session_id: "s2", user: ME, servers: [] } }));
    expect(s.servers).toEqual({});
    expect(s.messages[GENERAL]).toBeUndefined();
  });
});

describe("messages", () => {
  it("create, update and delete change the channel's history in order", () => {
    const a = message(BOB, "first");
    const b = message(ALICE, "second");
    let s = run(ready(), d({ t: "MESSAGE_CREATE", d: b }), d({ t: "MESSAGE_CREATE", d: a }));
    expect(s.messages[GENERAL].order).toEqual([a.id, b.id]);
    s = reduce(s, d({ t: "MESSAGE_UPDATE", d: { ...a, content: "first!", edited_at: "2026-01-02T00:00:00Z" } }));
    expect(s.messages[GENERAL].byId[a.id].content).toBe("first!");
    s = reduce(s, d({ t: "MESSAGE_DELETE", d: { id: a.id, channel_id: GENERAL, server_id: SERVER_ID } }));
    expect(s.messages[GENERAL].order).toEqual([b.id]);
    expect(s.messages[GENERAL].byId[a.id]).toBeUndefined();
  });

  it("the gateway echo of a sent message is not duplicated", () => {
    const m = message(ALICE, "mine");
    const s = run(ready(), { type: "message/upsert", message: m }, d({ t: "MESSAGE_CREATE", d: m }));
    expect(s.messages[GENERAL].order).toEqual([m.id]);
  });

  it("an update for a message never loaded is ignored", () => {
    const s0 = ready();
    const s = reduce(s0, d({ t: "MESSAGE_UPDATE", d: message(BOB, "x") }));
    expect(s).toBe(s0);
  });

  it("pages merge; a short page marks the start of history", () => {
    const [m1, m2, m3] = [message(BOB, "1"), message(BOB, "2"), message(BOB, "3")];
    let s = reduce(ready(), { type: "messages/loaded", channelId: GENERAL, messages: [m3, m2], direction: "latest", limit: 2 });
    expect(s.messages[GENERAL].reachedStart).toBe(false);
    expect(s.messages[GENERAL].loaded).toBe(true);
    s = reduce(s, { type: "messages/loaded", channelId: GENERAL, messages: [m1], direction: "before", limit: 2 });
    expect(s.messages[GENERAL].order).toEqual([m1.id, m2.id, m3.id]);
    expect(s.messages[GENERAL].reachedStart).toBe(true);
  });
});

describe("reactions", () => {
  it("count up and down and track the user's own", () => {
    const m = message(BOB, "react to me");
    const ev = (t: "MESSAGE_REACTION_ADD" | "MESSAGE_REACTION_REMOVE", user_id: string): Action =>
      d({ t, d: { message_id: m.id, channel_id: GENERAL, server_id: SERVER_ID, user_id, emoji: "👍" } });
    let s = run(ready(), d({ t: "MESSAGE_CREATE", d: m }), ev("MESSAGE_REACTION_ADD", BOB.id), ev("MESSAGE_REACTION_ADD", ME.id));
    expect(s.messages[GENERAL].byId[m.id].reactions).toEqual([{ emoji: "👍", count: 2, me: true }]);
    // A repeated add of our own reaction (e.g. replay after resume) is not counted twice.
    s = reduce(s, ev("MESSAGE_REACTION_ADD", ME.id));
    expect(s.messages[GENERAL].byId[m.id].reactions[0].count).toBe(2);
    s = reduce(s, ev("MESSAGE_REACTION_REMOVE", ME.id));
    expect(s.messages[GENERAL].byId[m.id].reactions).toEqual([{ emoji: "👍", count: 1, me: false }]);
    s = reduce(s, ev("MESSAGE_REACTION_REMOVE", BOB.id));
    expect(s.messages[GENERAL].byId[m.id].reactions).toEqual([]);
  });
});

describe("typing", () => {
  const start = (now: number): Action =>
    d({ t: "TYPING_START", d: { channel_id: GENERAL, server_id: SERVER_ID, user_id: BOB.id, timestamp: new Date(now).toISOString(), expires_at: new Date(now + 10_000).toISOString() } }, now);

  it("lasts 10 s, then is pruned", () => {
    const t0 = Date.parse("2026-03-01T00:00:00Z");
    let s = run(ready(), start(t0));
    expect(typingUsers(s, GENERAL, t0 + 9_999)).toEqual([BOB.id]);
    expect(typingUsers(s, GENERAL, t0 + 10_001)).toEqual([]);
    s = reduce(s, { type: "typing/prune", now: t0 + 5_000 });
    expect(s.typing[GENERAL][BOB.id]).toBeDefined();
    s = reduce(s, { type: "typing/prune", now: t0 + 10_001 });
    expect(s.typing[GENERAL]).toBeUndefined();
  });

  it("stops when the typist's message arrives", () => {
    const t0 = Date.now();
    const s = run(ready(), start(t0), d({ t: "MESSAGE_CREATE", d: message(BOB, "done typing") }));
    expect(typingUsers(s, GENERAL, t0)).toEqual([]);
  });

  it("ignores the user's own typing", () => {
    const s = reduce(ready(), d({ t: "TYPING_START", d: { channel_id: GENERAL, server_id: SERVER_ID, user_id: ME.id, timestamp: "", expires_at: "" } }));
    expect(s.typing).toEqual({});
  });
});

describe("unread", () => {
  it("another user's message in a channel not on screen is unread until read", () => {
    let s = run(ready(), d({ t: "MESSAGE_CREATE", d: message(BOB, "psst") }));
    expect(isUnread(s, GENERAL)).toBe(true);
    s = reduce(s, { type: "channel/read", channelId: GENERAL });
    expect(isUnread(s, GENERAL)).toBe(false);
  });

  it("messages in the open channel and own messages are read at once", () => {
    let s = run(ready(), { type: "channel/open", channelId: GENERAL }, d({ t: "MESSAGE_CREATE", d: message(BOB, "seen") }));
    expect(isUnread(s, GENERAL)).toBe(false);
    s = run(s, { type: "channel/open", channelId: null }, d({ t: "MESSAGE_CREATE", d: message(ALICE, "mine") }));
    expect(isUnread(s, GENERAL)).toBe(false);
  });
});

describe("channels and servers", () => {
  it("channel create, update and delete; the tree groups by category", () => {
    const cat = channel("20000000-0000-7000-8000-0000000000c1", { kind: "category", name: "Talk", position: 1 });
    const inCat = channel("20000000-0000-7000-8000-0000000000c2", { parent_id: cat.id, name: "random" });
    let s = run(ready(), d({ t: "CHANNEL_CREATE", d: cat }), d({ t: "CHANNEL_CREATE", d: inCat }));
    const tree = channelTree(s, SERVER_ID);
    expect(tree.map((g) => [g.category?.name ?? null, g.channels.map((c) => c.name)])).toEqual([
      [null, ["general"]],
      ["Talk", ["random"]],
    ]);
    s = reduce(s, d({ t: "CHANNEL_UPDATE", d: { ...inCat, name: "off-topic" } }));
    expect(s.channels[inCat.id].name).toBe("off-topic");
    s = run(s, { type: "channel/open", channelId: inCat.id }, d({ t: "CHANNEL_DELETE", d: { id: inCat.id, server_id: SERVER_ID } }));
    expect(s.channels[inCat.id]).toBeUndefined();
    expect(s.activeChannelId).toBeNull();
  });

  it("a channel event for an unknown server is ignored", () => {
    const s0 = ready();
    expect(reduce(s0, d({ t: "CHANNEL_CREATE", d: { ...channel("x1"), server_id: "other" } }))).toBe(s0);
  });

  it("SERVER_CREATE adds a server, SERVER_DELETE removes it with its channels and history", () => {
    let s = reduce(initialState, d({ t: "READY", d: { v: 1, session_id: "s", user: ME, servers: [] } }));
    s = run(s, d({ t: "SERVER_CREATE", d: readyServer() }), d({ t: "MESSAGE_CREATE", d: message(BOB, "hey") }));
    expect(s.servers[SERVER_ID]).toBeDefined();
    expect(s.messages[GENERAL].order).toHaveLength(1);
    s = reduce(s, d({ t: "SERVER_DELETE", d: { id: SERVER_ID } }));
    expect(s.servers[SERVER_ID]).toBeUndefined();
    expect(s.channels[GENERAL]).toBeUndefined();
    expect(s.messages[GENERAL]).toBeUndefined();
  });

  it("SERVER_UPDATE renames", () => {
    const s = reduce(ready(), d({ t: "SERVER_UPDATE", d: { ...readyServer().server, name: "Renamed" } }));
    expect(s.servers[SERVER_ID].server.name).toBe("Renamed");
  });
});

describe("members and roles", () => {
  it("member add, update and remove keep the count", () => {
    let s = reduce(ready(), d({ t: "SERVER_MEMBER_ADD", d: member(BOB) }));
    expect(s.servers[SERVER_ID].memberCount).toBe(3);
    s = reduce(s, d({ t: "SERVER_MEMBER_UPDATE", d: { ...member(BOB), nickname: "bobby" } }));
    expect(s.members[SERVER_ID][BOB.id].nickname).toBe("bobby");
    s = reduce(s, d({ t: "SERVER_MEMBER_REMOVE", d: { server_id: SERVER_ID, user: BOB } }));
    expect(s.members[SERVER_ID][BOB.id]).toBeUndefined();
    expect(s.servers[SERVER_ID].memberCount).toBe(2);
  });

  it("being removed oneself drops the server", () => {
    const s = reduce(ready(), d({ t: "SERVER_MEMBER_REMOVE", d: { server_id: SERVER_ID, user: ALICE } }));
    expect(s.servers[SERVER_ID]).toBeUndefined();
  });

  it("role create, update, delete; a deleted role leaves members' role lists", () => {
    const role = { id: "30000000-0000-7000-8000-000000000001", server_id: SERVER_ID, name: "mods", permissions: "4", color: 0xff8800, hoist: true, mentionable: false, position: 1 };
    let s = run(ready(), d({ t: "SERVER_ROLE_CREATE", d: { server_id: SERVER_ID, role } }), d({ t: "SERVER_MEMBER_UPDATE", d: member(ALICE, [role.id]) }));
    expect(s.servers[SERVER_ID].member.roles).toEqual([role.id]);
    s = reduce(s, d({ t: "SERVER_ROLE_UPDATE", d: { server_id: SERVER_ID, role: { ...role, name: "moderators" } } }));
    expect(s.servers[SERVER_ID].roles[role.id].name).toBe("moderators");
    s = reduce(s, d({ t: "SERVER_ROLE_DELETE", d: { server_id: SERVER_ID, role_id: role.id } }));
    expect(s.servers[SERVER_ID].roles[role.id]).toBeUndefined();
    expect(s.servers[SERVER_ID].member.roles).toEqual([]);
    expect(s.members[SERVER_ID][ME.id].roles).toEqual([]);
  });
});

describe("presence and users", () => {
  it("PRESENCE_UPDATE sets status; USER_UPDATE renames everywhere", () => {
    let s = run(ready(), d({ t: "PRESENCE_UPDATE", d: { user_id: BOB.id, status: "dnd", custom_status: "busy" } }), d({ t: "SERVER_MEMBER_ADD", d: member(BOB) }));
    expect(s.presences[BOB.id]).toEqual({ user_id: BOB.id, status: "dnd", custom_status: "busy" });
    s = reduce(s, d({ t: "USER_UPDATE", d: { ...BOB, username: "robert" } }));
    expect(s.members[SERVER_ID][BOB.id].user.username).toBe("robert");
    s = reduce(s, d({ t: "USER_UPDATE", d: { ...ME, custom_status: "hello" } }));
    expect(s.me?.custom_status).toBe("hello");
  });
});

describe("presences over REST", () => {
  it("presences/loaded fills in who is online (large servers, newcomers)", () => {
    const s = reduce(ready(), { type: "presences/loaded", presences: [{ user_id: "u9", status: "away", custom_status: null }] });
    expect(s.presences.u9.status).toBe("away");
    expect(s.presences[BOB.id].status).toBe("online");
  });

  it("READY of a large server without presences still loads", () => {
    const rs = { ...readyServer(), large: true, presences: undefined as unknown as [] };
    const s = reduce(initialState, d({ t: "READY", d: { v: 1, session_id: "s", user: ME, servers: [rs] } }));
    expect(s.servers[SERVER_ID]).toBeDefined();
  });
});

