// The REST publish API on three servers sharing one real redis-server: a
// request to any server reaches the official-client connections of every
// server (sends, group changes, closes), and the existence checks answer
// for the whole cluster.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, closed, next, record, sleep, JWT_SECRET } from "./helpers.mjs";
import { clusterClient, startRedis, startCluster, until } from "./cluster.mjs";
import { ACCESS_KEY, rest } from "./rest.mjs";

let redis;
let servers;
let upstream;
before(async () => {
  redis = await startRedis();
  // A serverless hub on every server, declared in a configuration file,
  // whose upstream adds numbers.
  upstream = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = JSON.parse(Buffer.concat(chunks).toString());
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(body.event === "Add" ? body.arguments[0] + body.arguments[1] : null));
  });
  await new Promise((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const config = join(mkdtempSync(join(tmpdir(), "tidings-rest-cluster-")), "tidings.toml");
  writeFileSync(
    config,
    `[auth]\naccess_keys = ["${ACCESS_KEY}"]\njwt_secret = "${JWT_SECRET}"\n` +
      `[hubs.game]\nupstream = "http://127.0.0.1:${upstream.address().port}/{hub}/{event}"\n`,
  );
  servers = await startCluster(3, redis, ["--config", config]);
});
after(async () => {
  await Promise.all((servers ?? []).map((s) => s.stop()));
  await redis?.stop();
  upstream?.closeAllConnections();
  upstream?.close();
});

const client = (i, options) => clusterClient(servers[i], options);

/** A REST call on server `i`. */
const api = (i, method, path, options) => rest(servers[i], method, `/api/hubs/test${path}`, options);

test("sends on any server reach the clients of every server", async () => {
  const dana = `dana-${Date.now()}`;
  const clients = await Promise.all([
    client(0, { user: dana }),
    client(1, { transport: "ServerSentEvents" }),
    client(2, { user: dana, protocol: "messagepack" }),
    client(2, { transport: "LongPolling" }),
  ]);
  const [d0, s1, d2, l2] = clients;
  try {
    const seen = clients.map((c) => record(c, "Notify"));
    // 202 means accepted, not delivered: sends through different servers
    // are ordered only if each is seen before the next is made.
    for (let i = 0; i < 3; i++) {
      const r = await api(i, "POST", "/:send", { body: { target: "Notify", arguments: [`all from ${i}`] } });
      assert.equal(r.status, 202);
      await until(() => seen.every((s) => s.length === i + 1), `the broadcast through server ${i} on every server`);
    }
    // Two sends through one server keep their order.
    assert.equal((await api(1, "POST", `/:send?excluded=${d2.id}&excluded=${s1.id}`, { body: { target: "Notify", arguments: ["excluding"] } })).status, 202);
    assert.equal((await api(1, "POST", `/users/${dana}/:send`, { body: { target: "Notify", arguments: ["to dana"] } })).status, 202);
    await until(() => seen[3].length === 4, "the broadcast with exclusions");
    assert.equal((await api(0, "POST", `/connections/${l2.id}/:send`, { body: { target: "Notify", arguments: ["to l2"] } })).status, 202);
    assert.equal((await api(2, "POST", `/connections/${s1.id}/:send`, { body: { target: "Notify", arguments: ["to s1"] } })).status, 202);
    await until(
      () => seen[0].length === 5 && seen[1].length === 4 && seen[2].length === 4 && seen[3].length === 5,
      "targeted sends",
    );
    await sleep(200);
    const all = [["all from 0"], ["all from 1"], ["all from 2"]];
    assert.deepEqual(seen[0], [...all, ["excluding"], ["to dana"]]);
    assert.deepEqual(seen[1], [...all, ["to s1"]]);
    assert.deepEqual(seen[2], [...all, ["to dana"]]);
    assert.deepEqual(seen[3], [...all, ["excluding"], ["to l2"]]);
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});

test("groups and existence checks span the cluster", async () => {
  const eve = `eve-${Date.now()}`;
  const group = `room-${Date.now()}`;
  const clients = await Promise.all([client(0), client(1, { user: eve }), client(2, { user: eve, transport: "LongPolling" })]);
  const [c0, e1, e2] = clients;
  try {
    const seen = clients.map((c) => record(c, "InRoom"));
    // The connection lives on server 2; the request goes to server 0.
    assert.equal((await api(0, "HEAD", `/connections/${e2.id}`)).status, 200);
    assert.equal((await api(1, "HEAD", `/users/${eve}`)).status, 200);
    assert.equal((await api(1, "HEAD", `/groups/${group}`)).status, 404);
    assert.equal((await api(0, "PUT", `/groups/${group}/connections/${c0.id}`)).status, 200);
    assert.equal((await api(2, "PUT", `/users/${eve}/groups/${group}`)).status, 200);
    assert.equal((await api(1, "HEAD", `/groups/${group}`)).status, 200);
    assert.equal((await api(0, "HEAD", `/users/${eve}/groups/${group}`)).status, 200);
    assert.equal((await api(1, "POST", `/groups/${group}/:send`, { body: { target: "InRoom", arguments: ["hello"] } })).status, 202);
    await until(() => seen.every((s) => s.length === 1), "the group send on every server");
    assert.equal((await api(2, "DELETE", `/groups/${group}/connections/${e1.id}`)).status, 200);
    assert.equal((await api(0, "POST", `/groups/${group}/:send`, { body: { target: "InRoom", arguments: ["again"] } })).status, 202);
    await until(() => seen[0].length === 2 && seen[2].length === 2, "the second group send");
    await sleep(200);
    assert.deepEqual(seen[1], [["hello"]]);
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});

test("closes requested on one server end connections on the others, with the reason", async () => {
  const [a0, b1, c2, kept] = await Promise.all([client(0), client(1, { transport: "ServerSentEvents" }), client(2), client(1)]);
  const ends = [a0, b1, c2, kept].map((c) => closed(c));
  try {
    assert.equal((await api(0, "DELETE", `/connections/${c2.id}?reason=moved`)).status, 200);
    assert.equal((await ends[2])?.message, "Server returned an error on close: moved");
    await until(async () => (await api(1, "HEAD", `/connections/${c2.id}`)).status === 404, "the closed connection to leave presence");
    assert.equal((await api(2, "POST", `/:closeConnections?excluded=${kept.id}&reason=upgrade`)).status, 204);
    assert.equal((await ends[0])?.message, "Server returned an error on close: upgrade");
    assert.equal((await ends[1])?.message, "Server returned an error on close: upgrade");
    await sleep(300);
    assert.equal(kept.state, "Connected");
    assert.equal((await api(0, "HEAD", `/connections/${kept.id}`)).status, 200);
  } finally {
    await kept.stop();
  }
});

/** One sample of server `i`'s /metrics. */
async function metric(i, name) {
  const text = await (await fetch(`${servers[i].url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : NaN;
}

test("backplane metrics count what REST sends published and every server received", async () => {
  const published = "tidings_backplane_messages_published_total";
  const received = "tidings_backplane_messages_received_total";
  // The earlier tests' departures (presence, closes) may still be on
  // their way: start from counters that have settled.
  const sample = () => Promise.all([0, 1, 2].map(async (i) => [await metric(i, published), await metric(i, received)]));
  let before = await sample();
  for (;;) {
    await sleep(300);
    const now = await sample();
    if (JSON.stringify(now) === JSON.stringify(before)) break;
    before = now;
  }
  const N = 7;
  for (let n = 0; n < N; n++) {
    assert.equal((await api(0, "POST", "/:send", { body: { target: "Counted", arguments: [n] } })).status, 202);
  }
  // One publish each, on server 0; every server (server 0 too, its own
  // echo, which it then skips) receives it once.
  await until(async () => (await metric(2, received)) - before[2][1] >= N && (await metric(1, received)) - before[1][1] >= N, "the receives");
  await sleep(300);
  assert.equal((await metric(0, published)) - before[0][0], N);
  assert.equal((await metric(1, published)) - before[1][0], 0);
  for (const i of [0, 1, 2]) assert.equal((await metric(i, received)) - before[i][1], N, `server ${i}`);
  for (const i of [0, 1, 2]) assert.equal(await metric(i, "tidings_backplane_messages_dropped_total"), 0);
  // Readiness reports the backplane on every server.
  for (const server of servers) {
    const { backplaneStatus, ...ready } = await (await fetch(`${server.url}/readyz`)).json();
    assert.deepEqual(ready, { status: "ready", accepting: true, backplane: true });
    assert.equal(backplaneStatus.state, "connected");
  }
});

test("a serverless hub spans the cluster: upstream results on any server, REST sends reach every server", async () => {
  const [g0, g2] = await Promise.all([
    connect(servers[0], "/hubs/game", "json"),
    connect(servers[2], "/hubs/game", "messagepack", { transport: "LongPolling" }),
  ]);
  try {
    assert.equal(await g2.invoke("Add", 20, 22), 42);
    const heard = [next(g0, "News"), next(g2, "News")];
    const r = await rest(servers[1], "POST", "/api/hubs/game/:send", { body: { target: "News", arguments: ["from server 1"] } });
    assert.equal(r.status, 202);
    assert.deepEqual(await Promise.all(heard), [["from server 1"], ["from server 1"]]);
    assert.equal((await rest(servers[1], "HEAD", `/api/hubs/game/connections/${g2.connectionId}`)).status, 200);
  } finally {
    await Promise.all([g0.stop(), g2.stop()]);
  }
});
