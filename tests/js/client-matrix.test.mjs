// The core of the protocol against every major version of the official
// JavaScript client still found in the wild: the 1.x `@aspnet/signalr`
// (negotiate version 0, no client-to-server streams, no automatic
// reconnect) and `@microsoft/signalr` 6, 8, 10 and 11, each over every
// transport with every hub protocol it supports. The other test files go
// deep with the current client; this one goes wide with the same few steps.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { startServer, tcpProxy, COMBOS, JWT_SECRET, token, rejectsWith } from "./helpers.mjs";

const require = createRequire(import.meta.url);

// Each entry: the client module, its MessagePack protocol class, and what
// the client can do. The MessagePack packages of 6.x and 8.x import
// `@microsoft/signalr` only for enum values and a null logger, which are the
// same in every version. No MessagePack package 11.x is published yet, so
// the 11.x client runs with the 10.x one (the hub protocol is the same).
const CLIENTS = [
  {
    name: "@aspnet/signalr 1.1.4",
    lib: require("@aspnet/signalr"),
    msgpack: require("@aspnet/signalr-protocol-msgpack").MessagePackHubProtocol,
    clientStreams: false,
    reconnect: false,
  },
  {
    name: "@microsoft/signalr 6.0",
    lib: require("signalr-6"),
    msgpack: require("signalr-protocol-msgpack-6").MessagePackHubProtocol,
    clientStreams: true,
    reconnect: true,
  },
  {
    name: "@microsoft/signalr 8.0",
    lib: require("signalr-8"),
    msgpack: require("signalr-protocol-msgpack-8").MessagePackHubProtocol,
    clientStreams: true,
    reconnect: true,
  },
  {
    name: "@microsoft/signalr 10.0",
    lib: require("@microsoft/signalr"),
    msgpack: require("@microsoft/signalr-protocol-msgpack").MessagePackHubProtocol,
    clientStreams: true,
    reconnect: true,
  },
  {
    name: "@microsoft/signalr 11.0",
    lib: require("signalr-11"),
    msgpack: require("@microsoft/signalr-protocol-msgpack").MessagePackHubProtocol,
    clientStreams: true,
    reconnect: true,
  },
];

let server; // JWT users, default errors (no detail)
before(async () => {
  server = await startServer(["--jwt-secret", JWT_SECRET]);
});
after(async () => {
  await server?.stop();
});

/** A started connection of `client` to the test hub at `target`. */
async function open(client, target, transport, protocol, { user, reconnect } = {}) {
  const { lib } = client;
  const options = { transport: lib.HttpTransportType[transport] };
  if (user) options.accessTokenFactory = () => token({ sub: user });
  let builder = new lib.HubConnectionBuilder()
    .withUrl(`${target.url}/hubs/test`, options)
    .configureLogging(lib.LogLevel.None);
  if (protocol === "messagepack") builder = builder.withHubProtocol(new client.msgpack());
  if (reconnect) builder = builder.withAutomaticReconnect(reconnect);
  const connection = builder.build();
  await connection.start();
  return connection;
}

/** Resolves with the arguments of the next `method` call (1.x has no per-handler `off`, so the handler stays). */
function next(connection, method, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${method} within ${timeoutMs} ms`)), timeoutMs);
    connection.on(method, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

/** The items of a server-to-client stream; on error, rejects with the error and the items so far in `error.items`. */
function collect(connection, method, ...args) {
  return new Promise((resolve, reject) => {
    const items = [];
    connection.stream(method, ...args).subscribe({
      next: (item) => items.push(item),
      complete: () => resolve(items),
      error: (error) => reject(Object.assign(error, { items })),
    });
  });
}

for (const client of CLIENTS) {
  for (const [transport, protocol] of COMBOS) {
    const tag = `${transport.toLowerCase()}-${protocol}-${client.name.replace(/\W+/g, "-")}`;
    describe(`${client.name} [${transport} ${protocol}]`, { concurrency: true }, () => {
      test("connects over the requested transport; invoke returns results", async () => {
        const c = await open(client, server, transport, protocol);
        try {
          assert.equal(await c.invoke("GetTransport"), transport);
          assert.equal(await c.invoke("Add", 2, 40), 42);
          const value = { nested: { list: [1, "two", null], s: "é€😀" }, flag: true };
          assert.deepEqual(await c.invoke("Echo", value), value);
          assert.equal(await c.invoke("Nothing"), null);
        } finally {
          await c.stop();
        }
      });

      test("send() reaches the hub; the hub calls the client", async () => {
        const c = await open(client, server, transport, protocol);
        try {
          const direct = next(c, "DirectMessage");
          await c.send("SendToCaller", "hello");
          assert.deepEqual(await direct, ["hello"]);
        } finally {
          await c.stop();
        }
      });

      test("groups: join, group message, leave", async () => {
        const c = await open(client, server, transport, protocol);
        try {
          const group = `group-${tag}`;
          const received = [];
          c.on("GroupMessage", (m) => received.push(m));
          await c.invoke("JoinGroup", group);
          await c.invoke("SendToGroup", group, "in");
          await c.invoke("LeaveGroup", group);
          await c.invoke("SendToGroup", group, "out");
          // Messages to one connection keep their order: once this one is
          // here, a group message after the leave would have been too.
          const direct = next(c, "DirectMessage");
          await c.invoke("SendToCaller", "done");
          await direct;
          assert.deepEqual(received, ["in"]);
        } finally {
          await c.stop();
        }
      });

      test("users: the token's subject is the user, messages to the user arrive", async () => {
        const user = `user-${tag}`;
        const c = await open(client, server, transport, protocol, { user });
        try {
          assert.equal(await c.invoke("GetUserIdentifier"), user);
          const message = next(c, "UserMessage");
          await c.invoke("SendToUser", user, { to: user });
          assert.deepEqual(await message, [{ to: user }]);
        } finally {
          await c.stop();
        }
      });

      test("errors: ASP.NET Core's texts; the connection survives", async () => {
        const c = await open(client, server, transport, protocol);
        try {
          await rejectsWith(assert, c.invoke("Missing"), "Failed to invoke 'Missing' due to an error on the server. HubException: Method does not exist.");
          await rejectsWith(assert, c.invoke("Add", 1), "Failed to invoke 'Add' due to an error on the server.");
          await rejectsWith(assert, c.invoke("Throw", "secret"), "An unexpected error occurred invoking 'Throw' on the server.");
          await rejectsWith(
            assert,
            c.invoke("ThrowHubException", "for you"),
            "An unexpected error occurred invoking 'ThrowHubException' on the server. HubException: for you",
          );
          assert.equal(await c.invoke("Echo", "alive"), "alive");
        } finally {
          await c.stop();
        }
      });

      test("server-to-client streams: items, completion, errors", async () => {
        const c = await open(client, server, transport, protocol);
        try {
          assert.deepEqual(await collect(c, "Counter", 3, 0), [0, 1, 2]);
          await assert.rejects(collect(c, "CounterThenFail", 2, "bad"), (error) => {
            assert.equal(error.message, "An error occurred on the server while streaming results. HubException: bad");
            assert.deepEqual(error.items, [0, 1]);
            return true;
          });
        } finally {
          await c.stop();
        }
      });

      test("client-to-server streams", { skip: !client.clientStreams && "the client has no client-to-server streams" }, async () => {
        const c = await open(client, server, transport, protocol);
        try {
          const numbers = new client.lib.Subject();
          const total = c.invoke("Sum", numbers);
          for (const n of [1.5, 2, 3.5]) numbers.next(n);
          numbers.complete();
          assert.equal(await total, 7);

          const items = new client.lib.Subject();
          const echoed = collect(c, "EchoStream", items);
          items.next("a");
          items.next({ b: 1 });
          items.complete();
          assert.deepEqual(await echoed, ["a", { b: 1 }]);
        } finally {
          await c.stop();
        }
      });

      test("automatic reconnect after a network failure", { skip: !client.reconnect && "the client has no automatic reconnect" }, async () => {
        const proxy = await tcpProxy(server);
        const c = await open(client, proxy, transport, protocol, { reconnect: [0, 100, 500, 1000, 2000] });
        try {
          const firstId = c.connectionId;
          assert.equal(await c.invoke("GetConnectionId"), firstId);
          const reconnected = new Promise((resolve) => c.onreconnected(resolve));
          proxy.cut();
          const newId = await reconnected;
          assert.notEqual(newId, firstId);
          assert.equal(await c.invoke("GetConnectionId"), newId);
          assert.equal(await c.invoke("GetTransport"), transport);
        } finally {
          await c.stop();
          await proxy.close();
        }
      });
    });
  }
}
