// Slow consumers, as an operator sees them: a WebSocket client that stops
// reading while the official client broadcasts is closed by the
// --send-timeout-ms rule, with a WARN log line saying why, and counted
// under its own status in /metrics; the reading client is not disturbed.
// (How soon, on every transport: crates/tidings/tests/backpressure.rs.)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startServer, connect, sleep } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer(["--log-format", "json", "--send-timeout-ms", "1000"]);
});
after(async () => {
  await server.stop();
});

/**
 * A WebSocket on a raw socket that completes the upgrade and the hub
 * handshake, then stops reading (its TCP window fills, as a stuck client's
 * does). Resolves with the socket once the handshake answer has arrived.
 */
function stuckClient(url, path) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname);
    let received = Buffer.alloc(0);
    let upgraded = false;
    socket.on("error", reject);
    socket.on("connect", () =>
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    socket.on("data", (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (!upgraded) {
        const end = received.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = received.subarray(0, end).toString();
        if (!head.startsWith("HTTP/1.1 101")) return reject(new Error(`upgrade refused: ${head}`));
        upgraded = true;
        received = received.subarray(end + 4);
        // The hub handshake in one masked Text frame.
        const payload = Buffer.from('{"protocol":"json","version":1}\x1e');
        const mask = Buffer.from([1, 2, 3, 4]);
        const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
        socket.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]));
      }
      if (received.includes(Buffer.from("{}\x1e"))) {
        socket.pause();
        socket.removeAllListeners("data");
        resolve(socket);
      }
    });
  });
}

test("a WebSocket client that stops reading is closed as a slow consumer, logged at WARN and counted", async () => {
  const stuck = await stuckClient(server.url, "/hubs/test");
  const reader = await connect(server, "/hubs/test", "json");
  let seen = 0;
  reader.on("Broadcast", () => seen++);

  // 30 KB broadcasts (under the 32 KiB message limit) until the stuck
  // client is gone: a few MB fill its socket buffers, then its writes block.
  const big = "x".repeat(30_000);
  const started = Date.now();
  let sent = 0;
  let line;
  while (!line && Date.now() - started < 15_000) {
    await reader.invoke("Broadcast", big);
    sent++;
    line = server
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .find((l) => l.fields?.message === "closing slow consumer");
  }
  assert.ok(line, `no slow-consumer log line after ${sent} broadcasts:\n${server.stdout()}`);
  assert.equal(line.level, "WARN");
  assert.equal(line.fields.transport, "WebSockets");
  assert.equal(line.fields.rule, "no write progress for 1s");
  assert.ok(Number.isInteger(line.fields.queued), `queued: ${line.fields.queued}`);
  assert.ok(line.fields.connection_id, "the log line names the connection");

  // The server closes the socket: once read again, it ends.
  const ended = new Promise((resolve) => stuck.on("end", resolve).on("close", resolve));
  stuck.on("data", () => {});
  stuck.resume();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error("the stuck client's socket stays open")), 10_000);
  });
  await Promise.race([ended, timeout]).finally(() => clearTimeout(timer));

  // Counted under its own status; the reading client got every broadcast.
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(
    metrics,
    /signalr_server_connection_duration_seconds_count\{signalr_hub="test",signalr_transport="web_sockets",signalr_connection_status="slow_consumer"\} 1\n/,
  );
  const deadline = Date.now() + 5000;
  while (seen < sent && Date.now() < deadline) await sleep(20);
  assert.equal(seen, sent);
  stuck.destroy();
  await reader.stop();
});
