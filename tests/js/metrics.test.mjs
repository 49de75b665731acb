// Observability of the standalone server: /metrics scraped after known
// traffic from the official client (values checked against what the test
// did), /healthz and /readyz, and JSON logs carrying the invocation span.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, rejectsWith, sleep } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer(["--log-format", "json"], { RUST_LOG: "info,tidings::invocation=debug" });
});
after(async () => {
  await server.stop();
});

/** Parses the exposition into `{ "name{labels}": value }`. */
async function scrape() {
  const response = await fetch(`${server.url}/metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^application\/openmetrics-text/);
  const text = await response.text();
  assert.ok(text.trimEnd().endsWith("# EOF"), "the exposition ends with # EOF");
  const samples = {};
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    samples[line.slice(0, space)] = Number(line.slice(space + 1));
  }
  return samples;
}

const hubTransport = (transport) => `{signalr_hub="test",signalr_transport="${transport}"}`;

/** Waits until `predicate(samples)` holds (connection teardown is asynchronous). */
async function scrapeUntil(predicate) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const samples = await scrape();
    if (predicate(samples)) return samples;
    if (Date.now() > deadline) return samples;
    await sleep(50);
  }
}

test("metrics count connections by transport, messages, bytes and invocations", async () => {
  const before = await scrape();
  const ws = [await connect(server, "/hubs/test", "json"), await connect(server, "/hubs/test", "messagepack")];
  const sse = await connect(server, "/hubs/test", "json", { transport: "ServerSentEvents" });
  const lp = await connect(server, "/hubs/test", "messagepack", { transport: "LongPolling" });

  let samples = await scrape();
  assert.equal(samples[`signalr_server_active_connections${hubTransport("web_sockets")}`], 2);
  assert.equal(samples[`signalr_server_active_connections${hubTransport("server_sent_events")}`], 1);
  assert.equal(samples[`signalr_server_active_connections${hubTransport("long_polling")}`], 1);
  assert.equal(samples[`signalr_server_active_connections{signalr_hub="chat",signalr_transport="web_sockets"}`], 0);

  // Five successful invocations over WebSockets, two failing ones over SSE.
  for (let i = 0; i < 5; i++) assert.equal(await ws[0].invoke("Echo", `m${i}`), `m${i}`);
  await rejectsWith(assert, sse.invoke("Throw", "no"), "An unexpected error occurred invoking 'Throw' on the server.");
  await rejectsWith(assert, sse.invoke("Panic"), "An unexpected error occurred invoking 'Panic' on the server.");
  // A stream of three items over Long Polling.
  const items = [];
  await new Promise((resolve, reject) =>
    lp.stream("Counter", 3, 1).subscribe({ next: (i) => items.push(i), complete: resolve, error: reject }),
  );
  assert.deepEqual(items, [0, 1, 2]);

  samples = await scrape();
  const delta = (name) => (samples[name] ?? 0) - (before[name] ?? 0);
  assert.equal(delta(`tidings_invocation_duration_seconds_count{signalr_hub="test",outcome="ok"}`), 5);
  assert.equal(delta(`tidings_invocation_duration_seconds_count{signalr_hub="test",outcome="error"}`), 2);
  assert.equal(delta(`tidings_stream_invocations_total{signalr_hub="test"}`), 1);
  // Every latency fits in the +Inf bucket; a local Echo answers in under a second.
  assert.equal(delta(`tidings_invocation_duration_seconds_bucket{le="+Inf",signalr_hub="test",outcome="ok"}`), 5);
  assert.equal(delta(`tidings_invocation_duration_seconds_bucket{le="1.0",signalr_hub="test",outcome="ok"}`), 5);
  assert.ok(delta(`tidings_invocation_duration_seconds_sum{signalr_hub="test",outcome="ok"}`) > 0);

  // Received: the invocations each transport carried, plus the one Ping the
  // client sends soon after connecting where the transport has no keep-alive
  // of its own (not Long Polling).
  const received = (transport) => delta(`tidings_messages_received_total${hubTransport(transport)}`);
  assert.ok(received("web_sockets") >= 5 && received("web_sockets") <= 5 + 2, `${received("web_sockets")}`);
  assert.ok(received("server_sent_events") >= 2 && received("server_sent_events") <= 2 + 1, `${received("server_sent_events")}`);
  assert.equal(received("long_polling"), 1);
  // Each JSON invocation of Echo is at least {"type":1,"target":"Echo","arguments":["m0"]} plus a separator.
  assert.ok(delta(`tidings_bytes_received_total${hubTransport("web_sockets")}`) >= 5 * 45);
  // Sent: the handshake answer and five completions over WebSockets at least;
  // three items and a completion over Long Polling.
  assert.ok(delta(`tidings_messages_sent_total${hubTransport("web_sockets")}`) >= 2 + 5);
  assert.ok(delta(`tidings_messages_sent_total${hubTransport("long_polling")}`) >= 1 + 4);
  assert.ok(
    delta(`tidings_bytes_sent_total${hubTransport("web_sockets")}`) >= 5 * '{"type":3,"invocationId":"0","result":"m0"}'.length,
  );

  for (const c of [...ws, sse, lp]) await c.stop();
  const status = (transport) =>
    `signalr_server_connection_duration_seconds_count{signalr_hub="test",signalr_transport="${transport}",signalr_connection_status="normal_closure"}`;
  samples = await scrapeUntil((s) => s[`signalr_server_active_connections${hubTransport("web_sockets")}`] === 0 &&
    s[`signalr_server_active_connections${hubTransport("long_polling")}`] === 0 &&
    s[`signalr_server_active_connections${hubTransport("server_sent_events")}`] === 0);
  for (const transport of ["web_sockets", "server_sent_events", "long_polling"]) {
    assert.equal(samples[`signalr_server_active_connections${hubTransport(transport)}`], 0, transport);
  }
  const after = (name) => (samples[name] ?? 0) - (before[name] ?? 0);
  assert.equal(after(status("web_sockets")), 2);
  assert.equal(after(status("server_sent_events")), 1);
  assert.equal(after(status("long_polling")), 1);
});

test("/healthz and /readyz answer while the server runs", async () => {
  const health = await fetch(`${server.url}/healthz`);
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok" });
  const ready = await fetch(`${server.url}/readyz`);
  assert.equal(ready.status, 200);
  assert.deepEqual(await ready.json(), { status: "ready", accepting: true, backplane: null });
});

test("JSON logs carry the invocation span: hub, method, connection id", async () => {
  const c = await connect(server, "/hubs/test", "json");
  const id = await c.invoke("GetConnectionId");
  await rejectsWith(assert, c.invoke("Panic"), "An unexpected error occurred invoking 'Panic' on the server.");
  await c.stop();
  const deadline = Date.now() + 5000;
  let line;
  while (!line && Date.now() < deadline) {
    line = server
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .find((l) => l.fields?.message === "hub method panicked" && l.span?.["signalr.connection_id"] === id);
    if (!line) await sleep(50);
  }
  assert.ok(line, `no panic log line for ${id} in:\n${server.stdout()}`);
  assert.equal(line.level, "ERROR");
  assert.equal(line.fields.panic, "a hub method panicked on purpose");
  assert.equal(line.span.name, "invocation");
  assert.equal(line.span["rpc.system"], "signalr");
  assert.equal(line.span["rpc.service"], "test");
  assert.equal(line.span["rpc.method"], "Panic");
  assert.equal(line.span["otel.name"], "test/Panic");
});
