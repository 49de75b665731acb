// A raw connection handler (examples/echo-connection) driven by the
// official client's `HttpConnection`, the connection below `HubConnection`:
// negotiate and every transport without the hub protocol. The package does
// not export `HttpConnection` from its index, so it is imported from its
// CommonJS build.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { signalR, startExample } from "./helpers.mjs";

const require = createRequire(import.meta.url);
const { HttpConnection } = require("@microsoft/signalr/dist/cjs/HttpConnection.js");

const TRANSPORTS = ["WebSockets", "ServerSentEvents", "LongPolling"];

/** Opens a raw connection to the echo handler; `received` collects what comes back. */
async function open(server, transport) {
  const connection = new HttpConnection(`${server.url}/echo`, {
    transport: signalR.HttpTransportType[transport],
    logger: signalR.LogLevel.Warning,
  });
  const received = [];
  const waiters = [];
  connection.onreceive = (data) => {
    received.push(data);
    waiters.splice(0).forEach((wake) => wake());
  };
  const closed = new Promise((resolve) => (connection.onclose = resolve));
  await connection.start(signalR.TransferFormat.Text);
  /** Waits until everything received, joined, is `expected`. */
  const echoed = async (expected) => {
    const deadline = Date.now() + 10_000;
    while (received.join("") !== expected) {
      assert.ok(Date.now() < deadline, `received ${JSON.stringify(received.join(""))}`);
      await new Promise((wake) => {
        waiters.push(wake);
        setTimeout(wake, 200);
      });
    }
  };
  return { connection, received, echoed, closed };
}

describe("echo-connection", () => {
  let server;
  before(async () => (server = await startExample("echo-connection")));
  after(() => server?.stop());

  for (const transport of TRANSPORTS) {
    test(`every message comes back over ${transport}`, async () => {
      const { connection, echoed, closed } = await open(server, transport);
      assert.ok(connection.connectionId, "negotiate gave the connection an id");
      await connection.send("hello");
      await echoed("hello");
      // No handshake, no record separators: bytes in, the same bytes out.
      await connection.send("{\"not\":\"a hub message\"}");
      await echoed("hello{\"not\":\"a hub message\"}");
      await connection.stop();
      await closed;
    });
  }

  test("connections are independent of each other", async () => {
    const [a, b] = await Promise.all([open(server, "WebSockets"), open(server, "LongPolling")]);
    assert.notEqual(a.connection.connectionId, b.connection.connectionId);
    await a.connection.send("to a");
    await b.connection.send("to b");
    await Promise.all([a.echoed("to a"), b.echoed("to b")]);
    await Promise.all([a.connection.stop(), b.connection.stop()]);
  });

  test("the negotiate answer offers every transport", async () => {
    const answer = await fetch(`${server.url}/echo/negotiate?negotiateVersion=1`, { method: "POST" });
    const body = await answer.json();
    assert.deepEqual(
      body.availableTransports.map((t) => t.transport),
      TRANSPORTS,
    );
  });
});
