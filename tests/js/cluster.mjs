// Helpers for the scale-out suites: a real redis-server on a free port,
// several tidings servers sharing it, and a round-robin HTTP proxy in
// front of them that sends every request (upgrades included) to the next
// server in turn, as a load balancer without sticky sessions does.

import { spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { connect, startServer, sleep, token } from "./helpers.mjs";

/** The token of user `sub` (also its `name`), signed with the suites' secret. */
export const tokenOf = (sub) => token({ sub, name: sub });

/**
 * A connection to `server` (as `user`, if given) over the given transport
 * and protocol; `id` is its connection id as the server reports it.
 */
export async function clusterClient(server, { user, transport = "WebSockets", protocol = "json" } = {}) {
  const options = { transport };
  if (user) options.token = tokenOf(user);
  const connection = await connect(server, "/hubs/test", protocol, options);
  connection.id = await connection.invoke("GetConnectionId");
  return connection;
}

/** A free TCP port on 127.0.0.1. */
export async function freePort() {
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function ping(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let reply = "";
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d) => {
      reply += d;
      if (reply.includes("\r\n")) {
        socket.destroy();
        resolve(reply.startsWith("+PONG"));
      }
    });
    socket.on("error", () => resolve(false));
  });
}

/** Starts redis-server (no persistence) on a free port. */
export async function startRedis() {
  const port = await freePort();
  let child;
  const launch = async () => {
    child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    const deadline = Date.now() + 10000;
    while (!(await ping(port))) {
      if (Date.now() > deadline) throw new Error("redis-server did not start");
      await sleep(20);
    }
  };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    /** Kills it at once (SIGKILL): connections drop, data is gone. */
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      }
    },
    async restart() {
      await launch();
    },
    async stop() {
      await this.kill();
    },
  };
}

/** Starts `n` servers on one Redis, under a prefix of their own. */
export async function startCluster(n, redis, args = []) {
  const prefix = `t${Math.random().toString(36).slice(2, 10)}.`;
  return Promise.all(
    Array.from({ length: n }, () => startServer(["--redis", redis.url, "--redis-prefix", prefix, ...args])),
  );
}

/**
 * An HTTP proxy that sends each request to the next of `targets` in turn.
 * `log` records, per request, the target index and the request line; `cut()`
 * destroys every upgraded (WebSocket) connection, as a network failure would.
 */
export async function roundRobinProxy(targets) {
  let next = 0;
  const log = [];
  const tunnels = new Set();
  const pick = (req) => {
    const index = next++ % targets.length;
    log.push({ index, method: req.method, url: req.url });
    return new URL(targets[index].url);
  };
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const target = pick(req);
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        res.flushHeaders();
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket, head) => {
    const target = pick(req);
    const upstream = net.connect(Number(target.port), target.hostname, () => {
      let head_ = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head_ += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${head_}\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    const tunnel = { socket, upstream };
    tunnels.add(tunnel);
    const drop = () => {
      socket.destroy();
      upstream.destroy();
      tunnels.delete(tunnel);
    };
    for (const s of [socket, upstream]) {
      s.on("error", drop);
      s.on("close", drop);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    log,
    cut() {
      for (const { socket, upstream } of tunnels) {
        socket.destroy();
        upstream.destroy();
      }
      tunnels.clear();
    },
    async close() {
      this.cut();
      agent.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Waits until `condition()` holds. */
export async function until(condition, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
