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
