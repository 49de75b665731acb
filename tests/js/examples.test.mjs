// Runs every program of `examples/` and drives it with the official
// client, so that the examples keep working as the library changes. The
// binaries are built next to the server (`cargo build -p 'example-*'`).

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { connect, example, next, rejectsWith, startExample, token, JWT_SECRET } from "./helpers.mjs";
import { startRedis, roundRobinProxy } from "./cluster.mjs";

const run = promisify(execFile);

describe("hello-hub", () => {
  let server;
  before(async () => (server = await startExample("hello-hub")));
  after(() => server?.stop());

  test("the application's own route and the hub share the router", async () => {
    const answer = await fetch(`${server.url}/`);
    assert.equal(await answer.text(), "hello from axum");
  });

  test("SendMessage reaches every client as ReceiveMessage", async () => {
    const [a, b] = await Promise.all([connect(server, "/hubs/chat", "json"), connect(server, "/hubs/chat", "messagepack")]);
    const got = [next(a, "ReceiveMessage"), next(b, "ReceiveMessage")];
    await a.invoke("SendMessage", "ann", "hi");
    assert.deepEqual(await Promise.all(got), [["ann", "hi"], ["ann", "hi"]]);
    await Promise.all([a.stop(), b.stop()]);
  });
});

describe("chat-rooms", () => {
  let server;
  before(async () => (server = await startExample("chat-rooms")));
  after(() => server?.stop());

  test("a message to a room reaches its members only; joins and leaves are announced", async () => {
    const [ann, bob, eve] = await Promise.all([1, 2, 3].map(() => connect(server, "/hubs/rooms", "json")));
    const eveMessages = [];
    eve.on("ReceiveMessage", (...args) => eveMessages.push(args));

    await ann.invoke("JoinRoom", "rust", "ann");
    const joined = next(ann, "UserJoined");
    await bob.invoke("JoinRoom", "rust", "bob");
    assert.deepEqual(await joined, ["rust", "bob"]);
    await eve.invoke("JoinRoom", "go", "eve");

    const atBob = next(bob, "ReceiveMessage");
    await ann.invoke("SendToRoom", "rust", "ann", "borrowck says hi");
    assert.deepEqual(await atBob, ["rust", "ann", "borrowck says hi"]);

    const left = next(ann, "UserLeft");
    await bob.invoke("LeaveRoom", "rust", "bob");
    assert.deepEqual(await left, ["rust", "bob"]);
    const bobAfter = [];
    bob.on("ReceiveMessage", (...args) => bobAfter.push(args));
    const atAnn = next(ann, "ReceiveMessage");
    await ann.invoke("SendToRoom", "rust", "ann", "still here?");
    await atAnn;
    // Delivery to one group is in order: a later message to eve's room
    // arriving first shows nothing of "rust" was on its way to her.
    const atEve = next(eve, "ReceiveMessage");
    await eve.invoke("SendToRoom", "go", "eve", "gophers");
    await atEve;
    assert.deepEqual(eveMessages, [["go", "eve", "gophers"]]);
    assert.deepEqual(bobAfter, []);
    await Promise.all([ann, bob, eve].map((c) => c.stop()));
  });
});

describe("background-push", () => {
  let server;
  before(async () => (server = await startExample("background-push", { TICK_MS: "100" })));
  after(() => server?.stop());

  test("ticks arrive without the client invoking anything", async () => {
    const c = await connect(server, "/hubs/clock", "json");
    const [first] = await next(c, "Tick", 3000);
    const [second] = await next(c, "Tick", 3000);
    assert.equal(typeof first, "number");
    assert.ok(second > first, `${second} after ${first}`);
    assert.ok((await c.invoke("Count")) >= second, "the hub reads the task's counter");
    await c.stop();
  });
});

describe("jwt-roles", () => {
  let server;
  before(async () => (server = await startExample("jwt-roles", { JWT_SECRET })));
  after(() => server?.stop());

  test("a token with the role Admin may call Purge", async () => {
    const c = await connect(server, "/hubs/admin", "json", { token: token({ sub: "ann", role: "Admin" }) });
    assert.equal(await c.invoke("WhoAmI"), "ann");
    assert.equal(await c.invoke("Purge"), "purged by ann");
    await c.stop();
  });

  test("a token without the role gets the error and stays connected", async () => {
    const c = await connect(server, "/hubs/admin", "json", { token: token({ sub: "bob", roles: ["Ops"] }) });
    await rejectsWith(assert, c.invoke("Purge"), "Failed to invoke 'Purge' because user is unauthorized");
    assert.equal(await c.invoke("WhoAmI"), "bob");
    await c.stop();
  });

  test("without a token, negotiate answers 401", async () => {
    await assert.rejects(connect(server, "/hubs/admin", "json"), /401/);
  });

  test("the example's token command signs tokens the server accepts", async () => {
    const { stdout } = await run(example("jwt-roles"), ["token", "cy", "Admin"], { env: { ...process.env, JWT_SECRET } });
    const c = await connect(server, "/hubs/admin", "json", { token: stdout.trim() });
    assert.equal(await c.invoke("Purge"), "purged by cy");
    await c.stop();
  });
});

describe("redis-cluster", () => {
  let redis;
  let servers;
  before(async () => {
    redis = await startRedis();
    servers = await Promise.all([1, 2].map(() => startExample("redis-cluster", { REDIS_URL: redis.url })));
  });
  after(async () => {
    await Promise.all((servers ?? []).map((s) => s.stop()));
    await redis?.stop();
  });

  test("a message sent through one server reaches a client of the other", async () => {
    const [a, b] = await Promise.all(servers.map((s) => connect(s, "/hubs/chat", "json")));
    const atB = next(b, "ReceiveMessage");
    await a.invoke("SendMessage", "ann", "across servers");
    assert.deepEqual(await atB, ["ann", "across servers"]);
    await Promise.all([a.stop(), b.stop()]);
  });

  test("no sticky sessions: Long Polling through a round-robin balancer", async () => {
    const proxy = await roundRobinProxy(servers);
    try {
      // Negotiate, polls and sends of this client alternate between the servers.
      const c = await connect(proxy, "/hubs/chat", "json", { transport: "LongPolling" });
      const direct = await connect(servers[1], "/hubs/chat", "json");
      const atC = next(c, "ReceiveMessage");
      await direct.invoke("SendMessage", "bob", "hello, balancer");
      assert.deepEqual(await atC, ["bob", "hello, balancer"]);
      const atDirect = next(direct, "ReceiveMessage");
      await c.invoke("SendMessage", "cy", "and back");
      assert.deepEqual(await atDirect, ["cy", "and back"]);
      assert.deepEqual(new Set(proxy.log.map((r) => r.index)), new Set([0, 1]), "both servers saw its requests");
      await Promise.all([c.stop(), direct.stop()]);
    } finally {
      await proxy.close();
    }
  });
});

describe("rust-client", () => {
  let server;
  before(async () => (server = await startExample("hello-hub")));
  after(() => server?.stop());

  test("it sends a message and prints what the server sent back", async () => {
    const watcher = await connect(server, "/hubs/chat", "json");
    const seen = next(watcher, "ReceiveMessage");
    const { stdout } = await run(example("rust-client"), [], {
      env: { ...process.env, HUB_URL: `${server.url}/hubs/chat` },
      timeout: 20_000,
    });
    assert.equal(stdout, "received rust: hello from Rust\n");
    assert.deepEqual(await seen, ["rust", "hello from Rust"], "a JS client saw the Rust client's message");
    await watcher.stop();
  });
});
