// No sticky sessions: a round-robin proxy sends every request of a client
// (negotiate, WebSocket upgrade, SSE stream, polls, POSTs, DELETE, the
// re-attaching socket of a stateful reconnect) to the next of three
// servers in turn. The official client works over every transport and
// protocol as if there were one server.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, next, record, COMBOS, closed, sleep } from "./helpers.mjs";
import { startRedis, startCluster, roundRobinProxy, until } from "./cluster.mjs";

let redis;
let servers;
let proxy;
before(async () => {
  redis = await startRedis();
  servers = await startCluster(3, redis);
  proxy = await roundRobinProxy(servers);
});
after(async () => {
  await proxy?.close();
  await Promise.all((servers ?? []).map((s) => s.stop()));
  await redis?.stop();
});

/** The servers that negotiated, and that got the later requests (`?id=`), since log entry `from`. */
function routes(from) {
  const entries = proxy.log.slice(from);
  const negotiated = entries.find((r) => r.url.includes("/negotiate"))?.index;
  const later = new Set(entries.filter((r) => r.url.includes("?id=")).map((r) => r.index));
  return { negotiated, later };
}

for (const [transport, protocol] of COMBOS) {
  test(`${transport}/${protocol} through a round-robin proxy: invocations, broadcasts, groups, a clean stop`, async () => {
    const from = proxy.log.length;
    const direct = await connect(servers[1], "/hubs/test", "json");
    const client = await connect(proxy, "/hubs/test", protocol, { transport });
    try {
      assert.equal(await client.invoke("GetTransport"), transport);
      for (let i = 0; i < 6; i++) assert.equal(await client.invoke("Echo", `hello ${i}`), `hello ${i}`);
      const broadcasts = record(client, "Broadcast");
      await direct.invoke("Broadcast", "from server 2");
      await client.invoke("JoinGroup", "proxied");
      const group = next(client, "GroupMessage");
      await direct.invoke("SendToGroup", "proxied", "to the group");
      assert.deepEqual(await group, ["to the group"]);
      await until(() => broadcasts.length === 1, "the broadcast");
      assert.deepEqual(broadcasts, [["from server 2"]]);
      const id = await client.invoke("GetConnectionId");
      assert.ok(id.includes("."), "connection ids name their server");
      // The transport's requests landed on servers other than the one
      // that negotiated (WebSockets: the upgrade; HTTP transports: every
      // server in turn).
      const { negotiated, later } = routes(from);
      assert.ok([...later].some((i) => i !== negotiated), JSON.stringify(proxy.log.slice(from)));
      if (transport !== "WebSockets") assert.equal(later.size, 3);
    } finally {
      const gone = closed(client);
      await client.stop();
      assert.equal(await gone, undefined);
      await direct.stop();
    }
  });
}

test("a WebSocket whose negotiate was served elsewhere is served where it landed", async () => {
  const proxyHost = new URL(proxy.url).host;
  for (let i = 0; i < 3; i++) {
    const from = proxy.log.length;
    const client = await connect(proxy, "/hubs/test", i % 2 ? "messagepack" : "json");
    const { negotiated, later } = routes(from);
    assert.notEqual(negotiated, [...later][0]);
    assert.equal(await client.invoke("Add", 2, i), 2 + i);
    // Taken over, not forwarded: the server saw the client's own request.
    assert.equal(await client.invoke("GetHeader", "host"), proxyHost);
    await client.stop();
  }
});

test("stateful reconnect across servers: cut sockets re-attach through the proxy, nothing lost or repeated", async () => {
  const client = await connect(proxy, "/hubs/test", "json", { statefulReconnect: true });
  const direct = await connect(servers[2], "/hubs/test", "json");
  try {
    const id = await client.invoke("GetConnectionId");
    // Stateful connections stay on the server that negotiated them (their
    // later sockets find them by the token): this socket was forwarded.
    assert.notEqual(await client.invoke("GetHeader", "host"), new URL(proxy.url).host);
    await client.invoke("JoinGroup", "stateful");
    const got = record(client, "GroupMessage");
    let sent = 0;
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 5; i++) await direct.invoke("SendToGroup", "stateful", sent++);
      proxy.cut();
      for (let i = 0; i < 5; i++) await direct.invoke("SendToGroup", "stateful", sent++);
      await sleep(50);
    }
    await until(() => got.length >= sent, "every group message", 15000);
    assert.deepEqual(got.map(([n]) => n), Array.from({ length: sent }, (_, n) => n));
    assert.equal(await client.invoke("GetConnectionId"), id, "the same connection");
  } finally {
    await client.stop();
    await direct.stop();
  }
});

test("a token of a server that is gone gets 404", async () => {
  const res = await fetch(`${servers[0].url}/hubs/test?id=0123456789abcdef.nope`, { method: "POST", body: "x" });
  assert.equal(res.status, 404);
});
