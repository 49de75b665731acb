// Redis failures under load: redis-server is killed and restarted while a
// client of server 1 broadcasts. Servers stay up, server 1's own clients
// keep receiving, and server 2's clients receive every broadcast exactly
// once, in order, after the recovery (the outbox kept them meanwhile).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, record, sleep } from "./helpers.mjs";
import { startRedis, startCluster, until } from "./cluster.mjs";

let redis;
let servers;
before(async () => {
  redis = await startRedis();
  servers = await startCluster(2, redis, ["--redis-heartbeat-ms", "100"]);
  // The servers learn of each other (heartbeats) before the failure.
  await sleep(400);
});
after(async () => {
  await Promise.all((servers ?? []).map((s) => s.stop()));
  await redis?.stop();
});

test("a Redis restart mid-stream: no server falls over, nothing is lost or repeated", async () => {
  const sender = await connect(servers[0], "/hubs/test", "json");
  const local = await connect(servers[0], "/hubs/test", "messagepack", { transport: "LongPolling" });
  const remote = await Promise.all([
    connect(servers[1], "/hubs/test", "json"),
    connect(servers[1], "/hubs/test", "json", { transport: "ServerSentEvents" }),
  ]);
  try {
    const atLocal = record(local, "Broadcast");
    const atRemote = remote.map((c) => record(c, "Broadcast"));
    let n = 0;
    const burst = async (count) => {
      for (let i = 0; i < count; i++) {
        await sender.invoke("Broadcast", ++n);
        await sleep(2);
      }
    };
    const metric = async (name) => {
      const text = await (await fetch(`${servers[0].url}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(`${name} `));
      return line === undefined ? undefined : Number(line.split(" ")[1]);
    };
    const ready = async () => (await fetch(`${servers[0].url}/readyz`)).status;
    assert.equal(await metric("tidings_backplane_connected"), 1);
    assert.equal(await ready(), 200);
    await burst(30);
    await redis.kill();
    await burst(30);
    // The outage shows: not ready (a load balancer sends new clients
    // elsewhere), messages waiting in the outbox.
    await until(async () => (await metric("tidings_backplane_connected")) === 0, "the outage in /metrics");
    assert.equal(await ready(), 503);
    assert.ok((await metric("tidings_backplane_messages_buffered")) > 0);
    // Local delivery never waited for Redis.
    await until(() => atLocal.length === 60, "local delivery during the outage");
    await sleep(300);
    await burst(10);
    await redis.restart();
    await burst(30);
    const all = Array.from({ length: n }, (_, i) => i + 1);
    for (const seen of atRemote) {
      await until(() => seen.length >= n, "every broadcast on server 2", 20000);
    }
    await sleep(200);
    for (const seen of atRemote) assert.deepEqual(seen.map(([x]) => x), all);
    await until(() => atLocal.length === n, "local delivery");
    assert.deepEqual(atLocal.map(([x]) => x), all);
    assert.equal(await metric("tidings_backplane_connected"), 1);
    assert.equal(await metric("tidings_backplane_messages_buffered"), 0);
    assert.equal(await metric("tidings_backplane_messages_dropped_total"), 0);
    assert.ok((await metric("tidings_backplane_messages_published_total")) >= n);
    assert.equal(await ready(), 200);
    // Both servers are still serving.
    for (const server of servers) {
      const probe = await connect(server, "/hubs/test", "json");
      assert.equal(await probe.invoke("Echo", "alive"), "alive");
      await probe.stop();
    }
  } finally {
    await Promise.all([sender, local, ...remote].map((c) => c.stop()));
  }
});

test("past the outbox bound: the oldest are dropped, and /metrics and /readyz tell how many", async () => {
  const ownRedis = await startRedis();
  const own = await startCluster(2, ownRedis, ["--redis-heartbeat-ms", "100", "--redis-buffer-messages", "5"]);
  const clients = [];
  try {
    await sleep(400);
    const sender = await connect(own[0], "/hubs/test", "json");
    const remote = await connect(own[1], "/hubs/test", "json");
    clients.push(sender, remote);
    const atRemote = record(remote, "Broadcast");
    const readyz = async () => {
      const response = await fetch(`${own[0].url}/readyz`);
      return { status: response.status, body: await response.json() };
    };
    const dropped = async () => {
      const text = await (await fetch(`${own[0].url}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith("tidings_backplane_messages_dropped_total "));
      return Number(line.split(" ")[1]);
    };
    let { status, body } = await readyz();
    assert.equal(status, 200);
    assert.equal(body.backplaneStatus.state, "connected");
    assert.equal(body.backplaneStatus.dropped, 0);

    const killed = Date.now();
    await ownRedis.kill();
    await until(async () => (await readyz()).status === 503, "the outage in /readyz");
    for (let n = 1; n <= 12; n++) await sender.invoke("Broadcast", n);
    ({ status, body } = await readyz());
    assert.equal(status, 503);
    assert.equal(body.backplane, false);
    assert.equal(body.backplaneStatus.state, "reconnecting");
    // Reconnecting since the outage began (the clocks are the same machine's).
    const since = Date.parse(body.backplaneStatus.since);
    assert.ok(since >= killed - 1000 && since <= Date.now(), body.backplaneStatus.since);
    assert.equal(body.backplaneStatus.buffered, 5);
    assert.equal(body.backplaneStatus.dropped, 7);
    assert.equal(await dropped(), 7);

    await ownRedis.restart();
    // The default policy kept the freshest five.
    await until(() => atRemote.length >= 5, "the buffered broadcasts on server 2");
    await sleep(300);
    assert.deepEqual(atRemote.map(([x]) => x), [8, 9, 10, 11, 12]);
    ({ status, body } = await readyz());
    assert.equal(status, 200);
    assert.equal(body.backplaneStatus.state, "connected");
    assert.ok(Date.parse(body.backplaneStatus.since) > since);
    assert.equal(body.backplaneStatus.buffered, 0);
    assert.equal(body.backplaneStatus.dropped, 7);
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
    await Promise.all(own.map((s) => s.stop()));
    await ownRedis.stop();
  }
});
