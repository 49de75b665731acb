// Behind the load balancers people use: three servers on Redis behind
// HAProxy and behind nginx, each run with the committed example
// configuration (deploy/haproxy.cfg, deploy/nginx.conf): round-robin, no
// stickiness. The official client works over every transport and protocol
// through both; the balancer passes the client's address and scheme on; a
// crashed server is skipped and a restarted one served again.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { connect, record, COMBOS, closed } from "./helpers.mjs";
import { until } from "./cluster.mjs";
import { BALANCERS, startBalancedCluster } from "./balancers.mjs";

/** A negotiate request through `cluster` from a chosen local address (127.0.0.x). */
function negotiate(cluster, localAddress, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${cluster.url}/hubs/test/negotiate?negotiateVersion=1`,
      { method: "POST", headers, localAddress },
      (res) => {
        let body = "";
        res.on("data", (d) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** The servers that got the connection's requests (negotiate and `?id=`), once all are logged. */
async function routes(cluster, from, transport) {
  let entries = [];
  // A request is logged once it is over: wait for the transport's last one
  // (the socket or event stream; the DELETE that ends a Long Polling one).
  const last =
    transport === "LongPolling" ? (r) => r.method === "DELETE" : (r) => r.method === "GET" && r.url.includes("?id=");
  await until(async () => (entries = await cluster.requests(from)).some(last), "the balancer's log of the connection");
  const negotiated = entries.filter((r) => r.url.includes("/negotiate")).map((r) => r.server);
  const later = entries.filter((r) => r.url.includes("?id=")).map((r) => r.server);
  return { entries, negotiated, later: new Set(later) };
}

for (const kind of BALANCERS) {
  describe(`behind ${kind}`, () => {
    let cluster;
    before(async () => {
      cluster = await startBalancedCluster(kind);
    });
    after(() => cluster?.close());

    for (const [transport, protocol] of COMBOS) {
      test(`${transport}/${protocol}: invocations, broadcasts and groups from every server, a clean stop`, async () => {
        const from = (await cluster.requests()).length;
        // One client straight on each server: what they send must reach
        // the balanced client wherever its connection lives.
        const direct = await Promise.all(cluster.servers.map((s) => connect(s, "/hubs/test", "json")));
        const client = await connect(cluster, "/hubs/test", protocol, { transport });
        try {
          assert.equal(await client.invoke("GetTransport"), transport);
          const times = [];
          for (let i = 0; i < 7; i++) {
            const start = performance.now();
            assert.equal(await client.invoke("Echo", `hello ${i}`), `hello ${i}`);
            times.push(performance.now() - start);
          }
          // Nothing held back on the way: a balancer that batches a
          // streamed response (HAProxy without http-no-delay) adds up to
          // 200 ms to every message of an event stream.
          const median = times.sort((a, b) => a - b)[3];
          assert.ok(median < 100, `round trips of ${times.map(Math.round)} ms`);
          const broadcasts = record(client, "Broadcast");
          const groups = record(client, "GroupMessage");
          await client.invoke("JoinGroup", "balanced");
          for (const [i, sender] of direct.entries()) {
            await sender.invoke("Broadcast", `from server ${i}`);
            await sender.invoke("SendToGroup", "balanced", `group from server ${i}`);
          }
          await until(() => broadcasts.length === 3 && groups.length === 3, "three broadcasts and group messages");
          assert.deepEqual(broadcasts.map(([m]) => m).sort(), ["from server 0", "from server 1", "from server 2"]);
          assert.deepEqual(groups.map(([m]) => m).sort(), [
            "group from server 0",
            "group from server 1",
            "group from server 2",
          ]);
          await client.invoke("LeaveGroup", "balanced");
          await direct[0].invoke("SendToGroup", "balanced", "after leaving");
          await direct[0].invoke("Broadcast", "last");
          await until(() => broadcasts.length === 4, "the last broadcast");
          assert.equal(groups.length, 3, "no group message after leaving");
        } finally {
          const gone = closed(client);
          await client.stop();
          assert.equal(await gone, undefined);
          await Promise.all(direct.map((c) => c.stop()));
        }
        // The balancer really spread the connection's requests: the
        // WebSocket upgrade went elsewhere than the negotiate, the HTTP
        // transports' polls, sends and DELETE went to every server.
        const { entries, negotiated, later } = await routes(cluster, from, transport);
        const log = JSON.stringify(entries);
        assert.equal(negotiated.length, 1, log);
        if (transport === "WebSockets") {
          assert.ok(!later.has(negotiated[0]) && later.size === 1, log);
        } else {
          assert.equal(later.size, 3, log);
        }
        // No balancer or server failure (499, 404: requests the client
        // gave up on while stopping).
        assert.ok(entries.every((r) => r.status < 500), log);
      });
    }

    test("the client's address and scheme reach the server as forwarded headers", async () => {
      const client = await connect(cluster, "/hubs/test", "json");
      try {
        assert.equal(await client.invoke("GetHeader", "x-forwarded-for"), "127.0.0.1");
        assert.equal(await client.invoke("GetHeader", "x-forwarded-proto"), "http");
        assert.equal(await client.invoke("GetHeader", "host"), new URL(cluster.url).host);
      } finally {
        await client.stop();
      }
    });

    test("a crashed server is skipped at once, and served again once restarted", async () => {
      await cluster.stop(1);
      try {
        // Requests the balancer sends to the dead server are retried on
        // another one (its connection is refused), before any health check
        // noticed: no client sees the crash.
        for (let i = 0; i < 4; i++) {
          const client = await connect(cluster, "/hubs/test", "json", { transport: "LongPolling" });
          assert.equal(await client.invoke("Add", i, 1), i + 1);
          await client.stop();
        }
      } finally {
        await cluster.start(1);
      }
      // Back in the rotation (after the balancer's health check or failure
      // timeout): new connections land on it again.
      const from = (await cluster.requests()).length;
      await until(
        async () => {
          const res = await negotiate(cluster, "127.0.0.1");
          assert.equal(res.status, 200);
          return (await cluster.requests(from)).some((r) => r.server === 1 && r.status === 200);
        },
        "the restarted server to get requests",
        15000,
      );
    });
  });

  describe(`behind ${kind}, the per-IP limit`, () => {
    let cluster;
    before(async () => {
      // One server, so that every negotiation counts at the same place.
      cluster = await startBalancedCluster(kind, {
        n: 1,
        args: ["--max-connections-per-ip", "1", "--trusted-proxies", "127.0.0.1"],
      });
    });
    after(() => cluster?.close());

    test("counts the client's address the balancer reports, which a client cannot forge", async () => {
      // The balancer is at 127.0.0.1, each client at an address of its own.
      assert.equal((await negotiate(cluster, "127.0.0.2")).status, 200);
      const again = await negotiate(cluster, "127.0.0.2");
      assert.equal(again.status, 429);
      assert.equal(again.body, "Too many connections from this address.");
      assert.equal((await negotiate(cluster, "127.0.0.3")).status, 200);
      // An X-Forwarded-For written by the client comes before the address
      // the balancer appends, which the server reads first.
      assert.equal((await negotiate(cluster, "127.0.0.4", { "X-Forwarded-For": "203.0.113.1" })).status, 200);
      assert.equal((await negotiate(cluster, "127.0.0.4", { "X-Forwarded-For": "203.0.113.2" })).status, 429);
      // The server would prefer a Forwarded header over X-Forwarded-For:
      // the balancer drops one written by the client.
      assert.equal((await negotiate(cluster, "127.0.0.5", { Forwarded: "for=203.0.113.3" })).status, 200);
      assert.equal((await negotiate(cluster, "127.0.0.5", { Forwarded: "for=203.0.113.4" })).status, 429);
    });
  });
}
