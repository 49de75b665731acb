// Shared helpers for the end-to-end suite: start a tidings server on a free
// port, build official-client connections, sign test tokens, and speak the
// raw protocol over a WebSocket where a test must see exact frames.

import { createHmac } from "node:crypto";
import net from "node:net";
import { dirname, join } from "node:path";
import * as signalR from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import WebSocket from "ws";
import { BIN, startProgram, startServer as startWithout } from "../server.mjs";

/**
 * `startServer` of ../server.mjs with `--test-hub`: most tests talk to the
 * test hub, which the server serves only when asked for.
 */
export function startServer(args = [], env = {}) {
  return startWithout(["--test-hub", ...args], env);
}

/** The path of the binary of `examples/<name>` (built beside the server). */
export const example = (name) => join(dirname(BIN), `example-${name}`);

/** Starts the program of `examples/<name>` on a free port. */
export function startExample(name, env = {}) {
  return startProgram(example(name), [], { LISTEN: "127.0.0.1:0", ...env });
}

export { signalR };
export const PROTOCOLS = ["json", "messagepack"];
/** Every transport with every protocol it can carry (SSE is text-only). */
export const COMBOS = [
  ["WebSockets", "json"],
  ["WebSockets", "messagepack"],
  ["ServerSentEvents", "json"],
  ["LongPolling", "json"],
  ["LongPolling", "messagepack"],
];
export const JWT_SECRET = "tidings-test-secret";
const RS = "\x1e";


/**
 * Signs an HS256 JWT with the suite's secret. Without an `exp` claim the
 * token expires in an hour (servers refuse tokens without one); `exp: null`
 * leaves it out.
 */
export function token(claims, secret = JWT_SECRET) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const withExpiry = { exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
  if (withExpiry.exp === null) delete withExpiry.exp;
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(withExpiry)}`;
  const sig = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${sig}`;
}

/** A HubConnection for `path` with the given protocol, not yet started. */
export function build(server, path, protocol, options = {}) {
  const httpOptions = {
    transport:
      options.transport === "All"
        ? signalR.HttpTransportType.WebSockets | signalR.HttpTransportType.ServerSentEvents | signalR.HttpTransportType.LongPolling
        : signalR.HttpTransportType[options.transport ?? "WebSockets"],
    skipNegotiation: options.skipNegotiation ?? false,
  };
  if (options.token) httpOptions.accessTokenFactory = () => options.token;
  // A WebSocket class of the caller's (the `ws` one, subclassed), so that a
  // test can see or pause each socket the client opens.
  if (options.WebSocket) httpOptions.WebSocket = options.WebSocket;
  let builder = new signalR.HubConnectionBuilder()
    .withUrl(`${server.url}${path}`, httpOptions)
    .configureLogging(signalR.LogLevel.None);
  if (protocol === "messagepack") builder = builder.withHubProtocol(new MessagePackHubProtocol());
  if (options.reconnect) builder = builder.withAutomaticReconnect(options.reconnect);
  if (options.statefulReconnect) {
    builder = builder.withStatefulReconnect(options.statefulReconnect === true ? undefined : options.statefulReconnect);
  }
  const connection = builder.build();
  if (options.serverTimeout) connection.serverTimeoutInMilliseconds = options.serverTimeout;
  if (options.keepAlive) connection.keepAliveIntervalInMilliseconds = options.keepAlive;
  return connection;
}

/** Builds and starts a connection. */
export async function connect(server, path, protocol, options = {}) {
  const connection = build(server, path, protocol, options);
  if (options.before) options.before(connection);
  await connection.start();
  return connection;
}

/** Resolves with the arguments of the next `method` call on `connection`. */
export function next(connection, method, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      connection.off(method, handler);
      reject(new Error(`no ${method} within ${timeoutMs} ms`));
    }, timeoutMs);
    const handler = (...args) => {
      clearTimeout(timer);
      connection.off(method, handler);
      resolve(args);
    };
    connection.on(method, handler);
  });
}

/** Records every call of `method`. */
export function record(connection, method) {
  const calls = [];
  connection.on(method, (...args) => calls.push(args));
  return calls;
}

/** Resolves with the error passed to `onclose`. */
export function closed(connection, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connection did not close")), timeoutMs);
    connection.onclose((error) => {
      clearTimeout(timer);
      resolve(error);
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Expects `promise` to reject with exactly `message`. */
export async function rejectsWith(assert, promise, message) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.message, message);
    return true;
  });
}

/**
 * A raw JSON-protocol WebSocket client, for assertions on exact frames.
 * `frames` collects every parsed message (handshake answers included).
 */
export async function rawJson(server, path, { handshake = { protocol: "json", version: 1 }, query = "" } = {}) {
  const wsUrl = `${server.url.replace("http", "ws")}${path}${query}`;
  const ws = new WebSocket(wsUrl);
  const frames = [];
  const waiters = [];
  let closeInfo = null;
  ws.on("message", (data, isBinary) => {
    const text = data.toString("utf8");
    for (const part of text.split(RS)) {
      if (part.length === 0) continue;
      frames.push({ json: JSON.parse(part), binary: isBinary });
    }
    for (const w of waiters.splice(0)) w();
  });
  ws.on("close", (code) => {
    closeInfo = { code };
    for (const w of waiters.splice(0)) w();
  });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
  });
  if (handshake !== null) ws.send(JSON.stringify(handshake) + RS);
  const client = {
    ws,
    frames,
    get closeInfo() {
      return closeInfo;
    },
    send(obj) {
      ws.send(JSON.stringify(obj) + RS);
    },
    sendRaw(text) {
      ws.send(text);
    },
    /** Waits until `predicate(frames)` holds. */
    async until(predicate, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (!predicate(frames, closeInfo)) {
        if (Date.now() > deadline) throw new Error(`timed out; frames: ${JSON.stringify(frames.map((f) => f.json))}`);
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 50);
        });
      }
    },
    close() {
      ws.terminate();
    },
  };
  return client;
}

/** Opens a WebSocket and reports the HTTP status if the upgrade is refused. */
export function upgradeStatus(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.once("open", () => {
      ws.terminate();
      resolve(101);
    });
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    ws.once("error", () => {});
  });
}

/**
 * A TCP proxy in front of `target` (an http://host:port URL). `cut()`
 * destroys every proxied connection in both directions, as a network
 * failure would. With `refusing` set, new connections are dropped at once;
 * with `holding` set, they are accepted but not forwarded until `release()`.
 */
export async function tcpProxy(target) {
  const { hostname, port } = new URL(target.url);
  const pairs = new Set();
  const held = [];
  let accepted = 0;
  let refusing = false;
  let holding = false;
  const forward = (client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { client, upstream, at: Date.now() };
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const socket of [client, upstream]) {
      socket.on("error", drop);
      socket.on("close", drop);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  };
  const listener = net.createServer((client) => {
    accepted += 1;
    if (refusing) {
      client.destroy();
    } else if (holding) {
      // Unread bytes wait in the socket until it is forwarded.
      held.push(client);
    } else {
      forward(client);
    }
  });
  await new Promise((resolve) => listener.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${listener.address().port}`,
    get accepted() {
      return accepted;
    },
    set refusing(value) {
      refusing = value;
    },
    set holding(value) {
      holding = value;
    },
    release() {
      holding = false;
      for (const client of held.splice(0)) forward(client);
    },
    /** Cuts every proxied connection (with `olderThanMs`, those opened at least that long ago). */
    cut({ olderThanMs = 0 } = {}) {
      const before = Date.now() - olderThanMs;
      for (const pair of pairs) {
        if (pair.at > before) continue;
        pair.client.destroy();
        pair.upstream.destroy();
        pairs.delete(pair);
      }
    },
    async close() {
      this.cut();
      for (const client of held.splice(0)) client.destroy();
      await new Promise((resolve) => listener.close(resolve));
    },
  };
}
