// Scale-out on a Redis Cluster: three tidings servers started with
// `--redis-cluster` on a real three-master cluster act as one, and their
// channels travel by sharded pub/sub (checked on the nodes themselves).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { record, startServer, JWT_SECRET, sleep } from "./helpers.mjs";
import { clusterClient, until } from "./cluster.mjs";

const run = promisify(execFile);

/** `redis-cli` against one node; fails clearly when redis-cli is missing. */
async function cli(port, ...args) {
  try {
    const { stdout } = await run("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args]);
    return stdout;
  } catch (error) {
    if (error.code === "ENOENT") {
      throw new Error("redis-cli is needed for the Redis Cluster tests (Debian: redis-tools, which redis-server brings)");
    }
    return "";
  }
}

async function free(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}

/** A port whose cluster bus port (10000 higher) is free too. */
async function clusterPort(taken) {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 25000);
    if (!taken.includes(port) && (await free(port)) && (await free(port + 10000))) return port;
  }
}

async function startRedisCluster() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tidings-cluster-"));
  const ports = [];
  for (let i = 0; i < 3; i++) ports.push(await clusterPort(ports));
  const nodes = ports.map((port) =>
    spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
        "--cluster-config-file", `nodes-${port}.conf`, "--dir", dir, "--save", "", "--appendonly", "no"],
      { stdio: "ignore" },
    ),
  );
  for (const port of ports) await until(async () => (await cli(port, "PING")).includes("PONG"), `node ${port}`);
  try {
    await run("redis-cli", ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes"]);
  } catch (error) {
    throw new Error(`redis-cli --cluster create failed: ${error.stderr ?? error.message}`);
  }
  for (const port of ports) {
    await until(async () => (await cli(port, "CLUSTER", "INFO")).includes("cluster_state:ok"), `cluster state of ${port}`);
  }
  return {
    ports,
    seeds: ports.map((p) => `redis://127.0.0.1:${p}`).join(","),
    async stop() {
      await Promise.all(
        nodes.map((child) => {
          if (child.exitCode !== null || child.signalCode !== null) return undefined;
          const exited = new Promise((resolve) => child.once("exit", resolve));
          child.kill("SIGKILL");
          return exited;
        }),
      );
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let cluster;
let servers;
const prefix = `c${Math.random().toString(36).slice(2, 10)}.`;
before(async () => {
  cluster = await startRedisCluster();
  servers = await Promise.all(
    [0, 1, 2].map(() =>
      startServer(["--redis", cluster.seeds, "--redis-cluster", "--redis-prefix", prefix, "--jwt-secret", JWT_SECRET]),
    ),
  );
});
after(async () => {
  await Promise.all((servers ?? []).map((s) => s.stop()));
  await cluster?.stop();
});

const client = (i, options) => clusterClient(servers[i], options);

/** Sum over the nodes of `PUBSUB <sub> <channel>`'s count. */
async function subscribers(sub, channel) {
  let sum = 0;
  for (const port of cluster.ports) {
    const lines = (await cli(port, "PUBSUB", sub, channel)).trim().split("\n");
    sum += Number(lines[1] ?? 0);
  }
  return sum;
}

test("three servers on a Redis Cluster act as one, over sharded pub/sub", async () => {
  const ann = `ann-${Date.now()}`;
  const clients = await Promise.all([
    client(0, { user: ann }),
    client(1, { transport: "ServerSentEvents" }),
    client(2, { protocol: "messagepack", transport: "LongPolling" }),
  ]);
  try {
    const broadcasts = clients.map((c) => record(c, "Broadcast"));
    const N = 20;
    for (let n = 0; n < N; n++) await clients[0].invoke("Broadcast", n);
    await until(() => broadcasts.every((s) => s.length >= N), "every broadcast everywhere");

    const group = clients.map((c) => record(c, "GroupMessage"));
    const users = clients.map((c) => record(c, "UserMessage"));
    await clients[0].invoke("AddToGroup", clients[2].id, "room");
    await clients[1].invoke("SendToGroup", "room", "to the room");
    await clients[2].invoke("SendToUser", ann, "to ann");
    await until(() => group[2].length === 1 && users[0].length === 1, "group and user messages");
    await sleep(200);
    for (const s of broadcasts) assert.deepEqual(s.map(([n]) => n), Array.from({ length: N }, (_, n) => n));
    assert.deepEqual(group, [[], [], [["to the room"]]]);
    assert.deepEqual(users, [[["to ann"]], [], []]);

    // Every server listens to the hub's `all` channel, on its shard only,
    // and no channel of these servers is a classic one.
    const all = `${prefix}tidings.TestHub:all`;
    assert.equal(await subscribers("SHARDNUMSUB", all), 3);
    assert.equal(await subscribers("NUMSUB", all), 0);
    assert.equal(await subscribers("SHARDNUMSUB", `${prefix}tidings.TestHub:group:room`), 1);
    for (const port of cluster.ports) {
      assert.equal((await cli(port, "PUBSUB", "CHANNELS", `${prefix}*`)).trim(), "");
    }
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
});
