// Scale-out: three tidings servers on one real redis-server act as one.
// Clients connect to different servers with the official client; every
// target, group changes of connections on other servers, client results
// and streams across servers, and presence are checked end to end.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, next, record, JWT_SECRET, sleep } from "./helpers.mjs";
import { clusterClient, startRedis, startCluster, tokenOf, until } from "./cluster.mjs";

let redis;
let servers;
before(async () => {
  redis = await startRedis();
  servers = await startCluster(3, redis, ["--jwt-secret", JWT_SECRET]);
});
after(async () => {
  await Promise.all((servers ?? []).map((s) => s.stop()));
  await redis?.stop();
});

const client = (i, options) => clusterClient(servers[i], options);

async function stopAll(connections) {
  await Promise.all(connections.map((c) => c.stop()));
}

test("a broadcast from server 1 reaches the clients of servers 1-3 exactly once, in order", async () => {
  const clients = await Promise.all([
    client(0, { transport: "WebSockets", protocol: "json" }),
    client(0, { transport: "LongPolling", protocol: "messagepack" }),
    client(1, { transport: "WebSockets", protocol: "messagepack" }),
    client(1, { transport: "ServerSentEvents", protocol: "json" }),
    client(2, { transport: "LongPolling", protocol: "json" }),
    client(2, { transport: "WebSockets", protocol: "json" }),
  ]);
  try {
    const seen = clients.map((c) => record(c, "Broadcast"));
    const N = 30;
    for (let n = 0; n < N; n++) await clients[0].invoke("Broadcast", n);
    await until(() => seen.every((s) => s.length >= N), "every broadcast everywhere");
    await sleep(200);
    for (const s of seen) assert.deepEqual(s.map(([n]) => n), Array.from({ length: N }, (_, n) => n));
  } finally {
    await stopAll(clients);
  }
});

test("group and user messages reach members and users on every server", async () => {
  const ann = `ann-${Date.now()}`;
  const bob = `bob-${Date.now()}`;
  const [a0, a1, b2, c2] = await Promise.all([
    client(0, { user: ann }),
    client(1, { user: ann, transport: "ServerSentEvents" }),
    client(2, { user: bob, protocol: "messagepack" }),
    client(2, {}),
  ]);
  try {
    await Promise.all([a0.invoke("JoinGroup", "room"), b2.invoke("JoinGroup", "room")]);
    const group = [a0, a1, b2, c2].map((c) => record(c, "GroupMessage"));
    const users = [a0, a1, b2, c2].map((c) => record(c, "UserMessage"));
    await c2.invoke("SendToGroup", "room", "to the room");
    await c2.invoke("SendToUser", ann, "to ann");
    await c2.invoke("SendToUsers", [ann, bob], "to both");
    await until(() => group[0].length === 1 && group[2].length === 1, "group messages");
    await until(() => users[0].length === 2 && users[1].length === 2 && users[2].length === 1, "user messages");
    await c2.invoke("SendToGroup", "room", "fence");
    await until(() => group[0].length === 2 && group[2].length === 2, "the fence");
    assert.deepEqual(group[1], []);
    assert.deepEqual(group[3], []);
    assert.deepEqual(users[0], [["to ann"], ["to both"]]);
    assert.deepEqual(users[1], [["to ann"], ["to both"]]);
    assert.deepEqual(users[2], [["to both"]]);
    assert.deepEqual(users[3], []);
  } finally {
    await stopAll([a0, a1, b2, c2]);
  }
});

test("a server adds and removes a connection of another server to and from a group", async () => {
  const [a, b, c] = await Promise.all([client(0), client(1, { protocol: "messagepack" }), client(2)]);
  try {
    const got = record(b, "GroupMessage");
    await a.invoke("AddToGroup", b.id, "remote");
    await c.invoke("SendToGroup", "remote", "one");
    await until(() => got.length === 1, "the group message");
    await a.invoke("RemoveFromGroup", b.id, "remote");
    await b.invoke("JoinGroup", "fence");
    await c.invoke("SendToGroup", "remote", "two");
    await c.invoke("SendToGroup", "fence", "fence");
    await until(() => got.length === 2, "the fence");
    assert.deepEqual(got, [["one"], ["fence"]]);
  } finally {
    await stopAll([a, b, c]);
  }
});

test("client results reach a connection on another server", async () => {
  const [a, b] = await Promise.all([client(0), client(1, { transport: "LongPolling", protocol: "messagepack" })]);
  try {
    b.on("Double", (n) => n * 2);
    b.on("Fail", () => {
      throw new Error("no, thanks");
    });
    assert.equal(await a.invoke("AskClient", b.id, "Double", 21), 42);
    await assert.rejects(a.invoke("AskClient", b.id, "Fail", 0), /no, thanks/);
    await assert.rejects(a.invoke("AskClient", "nobody.nothing", "Double", 1), /Connection 'nobody.nothing' does not exist\./);
    const answer = next(a, "BackgroundAnswer");
    await a.invoke("AskClientInBackground", b.id, "Double", 5);
    assert.deepEqual(await answer, [true, 10]);
  } finally {
    await stopAll([a, b]);
  }
});

test("streams across servers: a stream of another server's client results, an upload relayed to another server", async () => {
  const [a, b, c] = await Promise.all([client(0), client(1), client(2, { protocol: "messagepack" })]);
  try {
    b.on("Square", (n) => n * n);
    const items = [];
    await new Promise((resolve, reject) =>
      a.stream("AskClientStream", b.id, "Square", 5).subscribe({ next: (i) => items.push(i), complete: resolve, error: reject }),
    );
    assert.deepEqual(items, [0, 1, 4, 9, 16]);

    const relayed = record(c, "Relayed");
    const subject = new (await import("./helpers.mjs")).signalR.Subject();
    const count = a.invoke("RelayStream", c.id, subject);
    for (const item of ["x", "y", "z"]) subject.next(item);
    subject.complete();
    assert.equal(await count, 3);
    await until(() => relayed.length === 3, "the relayed items");
    assert.deepEqual(relayed, [["x"], ["y"], ["z"]]);
  } finally {
    await stopAll([a, b, c]);
  }
});

test("presence answers for the whole cluster, from any server", async () => {
  const zoe = `zoe-${Date.now()}`;
  const yan = `yan-${Date.now()}`;
  const [z0, z1, y2] = await Promise.all([client(0, { user: zoe }), client(1, { user: zoe }), client(2, { user: yan })]);
  try {
    await z0.invoke("JoinGroup", "lounge");
    await y2.invoke("JoinGroup", "lounge");
    await y2.invoke("JoinGroup", "kitchen");
    for (const asker of [z0, z1, y2]) {
      const p = await asker.invoke("GetPresence", zoe, "lounge", y2.id);
      assert.deepEqual(p.connectionsOfUser, [z0.id, z1.id].sort());
      assert.deepEqual(p.usersInGroup, [yan, zoe].sort());
      assert.deepEqual(
        p.groupMembers.map((m) => m.connectionId),
        [z0.id, y2.id].sort(),
      );
      assert.deepEqual(p.groupsOfConnection, ["kitchen", "lounge"]);
      assert.ok(p.onlineUsers >= 2);
    }
    await z0.stop();
    await until(async () => (await y2.invoke("GetPresence", zoe, "lounge", y2.id)).connectionsOfUser.length === 1, "the departure");
    const p = await z1.invoke("GetPresence", zoe, "lounge", y2.id);
    assert.deepEqual(p.connectionsOfUser, [z1.id]);
    assert.deepEqual(p.usersInGroup, [yan]);
  } finally {
    await stopAll([z0, z1, y2]);
  }
});

test("the chat shows who is in a room, whichever server they are on", async () => {
  const tokens = ["ann", "bob"].map((n) => tokenOf(`${n}-${Date.now()}`));
  const ann = await connect(servers[0], "/hubs/chat", "json", { token: tokens[0] });
  const bob = await connect(servers[2], "/hubs/chat", "messagepack", { token: tokens[1] });
  try {
    const annSees = record(ann, "RoomUsers");
    await ann.invoke("JoinRoom", "rust");
    await bob.invoke("JoinRoom", "rust");
    await until(() => annSees.length === 2, "RoomUsers after both joined");
    assert.equal(annSees[1][0].users.length, 2);
    assert.equal(annSees[1][0].connections, 2);
    const seen = await bob.invoke("GetRoomUsers", "rust");
    assert.deepEqual(seen, annSees[1][0]);
    await bob.invoke("LeaveRoom", "rust");
    await until(() => annSees.length === 3, "RoomUsers after the leave");
    assert.equal(annSees[2][0].users.length, 1);
  } finally {
    await stopAll([ann, bob]);
  }
});
