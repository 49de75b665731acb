// The REST publish API of one server, driven with fetch as a backend would,
// observed through official-client connections: every send, group and
// close operation, the existence checks, and the refusals (401, 400, 404,
// 405, 413) with their JSON errors.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { startServer, connect, closed, record, sleep, token, JWT_SECRET } from "./helpers.mjs";
import { until } from "./cluster.mjs";
import { ACCESS_KEY, rest, restToken } from "./rest.mjs";

let server;
before(async () => {
  server = await startServer([
    "--jwt-secret",
    JWT_SECRET,
    "--access-key",
    `${ACCESS_KEY},an-older-rotated-key-0123`,
  ]);
});
after(async () => {
  await server?.stop();
});

const tokenOf = (sub) => token({ sub, exp: Math.floor(Date.now() / 1000) + 3600 });

async function client({ user, transport = "WebSockets", protocol = "json" } = {}) {
  const options = { transport };
  if (user) options.token = tokenOf(user);
  const connection = await connect(server, "/hubs/test", protocol, options);
  connection.id = await connection.invoke("GetConnectionId");
  return connection;
}

const stopAll = (connections) => Promise.all(connections.map((c) => c.stop()));
const unique = (name) => `${name}-${Math.random().toString(36).slice(2, 8)}`;

test("health and the OpenAPI document need no token", async () => {
  const head = await fetch(`${server.url}/api/health`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal((await fetch(`${server.url}/api/health`)).status, 200);
  const doc = await rest(server, "GET", "/api/openapi.json", { auth: false });
  assert.equal(doc.status, 200);
  assert.equal(doc.body.openapi, "3.0.3");
  assert.ok(doc.body.paths["/api/hubs/{hub}/:send"].post);
});

test("sends to all (with excluded), a user, a connection and a group reach exactly their clients", async () => {
  const ann = unique("ann");
  const clients = await Promise.all([
    client({ user: ann }),
    client({ user: ann, transport: "ServerSentEvents" }),
    client({ transport: "LongPolling", protocol: "messagepack" }),
    client({ protocol: "messagepack" }),
  ]);
  const [a0, a1, c2, c3] = clients;
  try {
    const seen = clients.map((c) => record(c, "Notify"));
    const send = async (path, body, query = "") => {
      const r = await rest(server, "POST", `/api/hubs/test${path}${query}`, { body });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body, "");
    };
    await send("/:send", { target: "Notify", arguments: ["all", { n: 1 }] });
    await send("/:send", { target: "notify", arguments: ["all but two"] }, `?excluded=${a1.id}&excluded=${c3.id}&api-version=2022-06-01`);
    await send(`/users/${ann}/:send`, { target: "Notify", arguments: ["to ann"] });
    await send(`/connections/${encodeURIComponent(c2.id)}/:send`, { target: "Notify", arguments: ["to c2"] });
    // Hub names are matched case-insensitively, as by the managed service.
    const r = await rest(server, "POST", "/api/hubs/TEST/:send", { body: { target: "Notify" } });
    assert.equal(r.status, 202);
    await until(() => [4, 3, 4, 2].every((n, i) => seen[i].length === n), "the sends");
    await sleep(200);
    assert.deepEqual(seen[0], [["all", { n: 1 }], ["all but two"], ["to ann"], []]);
    assert.deepEqual(seen[1], [["all", { n: 1 }], ["to ann"], []]);
    assert.deepEqual(seen[2], [["all", { n: 1 }], ["all but two"], ["to c2"], []]);
    assert.deepEqual(seen[3], [["all", { n: 1 }], []]);
  } finally {
    await stopAll(clients);
  }
});

test("groups: connections and users join and leave, existence checks follow", async () => {
  const bob = unique("bob");
  const group = unique("room");
  const clients = await Promise.all([client(), client({ user: bob, transport: "LongPolling" }), client({ user: bob }), client()]);
  const [c0, b1, b2, c3] = clients;
  try {
    const seen = clients.map((c) => record(c, "InRoom"));
    const api = (method, path, options) => rest(server, method, `/api/hubs/test${path}`, options);
    assert.equal((await api("HEAD", `/groups/${group}`)).status, 404);
    assert.equal((await api("PUT", `/groups/${group}/connections/${c0.id}`)).status, 200);
    assert.equal((await api("HEAD", `/groups/${group}`)).status, 200);
    assert.equal((await api("PUT", `/users/${bob}/groups/${group}`)).status, 200);
    assert.equal((await api("HEAD", `/users/${bob}/groups/${group}`)).status, 200);
    assert.equal((await api("HEAD", `/users/nobody/groups/${group}`)).status, 404);
    assert.equal((await api("POST", `/groups/${group}/:send`, { body: { target: "InRoom", arguments: [1] } })).status, 202);
    await until(() => seen[0].length === 1 && seen[1].length === 1 && seen[2].length === 1, "the group send");
    assert.equal(
      (await api("POST", `/groups/${group}/:send?excluded=${c0.id}`, { body: { target: "InRoom", arguments: [2] } })).status,
      202,
    );
    await until(() => seen[1].length === 2 && seen[2].length === 2, "the group send with excluded");
    assert.equal((await api("DELETE", `/users/${bob}/groups/${group}`)).status, 200);
    assert.equal((await api("HEAD", `/users/${bob}/groups/${group}`)).status, 404);
    assert.equal((await api("DELETE", `/groups/${group}/connections/${c0.id}`)).status, 200);
    assert.equal((await api("HEAD", `/groups/${group}`)).status, 404);
    assert.equal((await api("POST", `/groups/${group}/:send`, { body: { target: "InRoom", arguments: [3] } })).status, 202);
    // A fence through the connections' own channel: the group send came first.
    await api("POST", "/:send", { body: { target: "InRoom", arguments: ["fence"] } });
    await until(() => seen.every((s) => s.at(-1)?.[0] === "fence"), "the fence");
    assert.deepEqual(seen[0], [[1], ["fence"]]);
    assert.deepEqual(seen[1], [[1], [2], ["fence"]]);
    assert.deepEqual(seen[2], [[1], [2], ["fence"]]);
    assert.deepEqual(seen[3], [["fence"]]);
    // Unknown connections cannot join.
    const missing = await api("PUT", `/groups/${group}/connections/no-such-connection`);
    assert.equal(missing.status, 404);
    assert.equal(missing.body.code, "NotFound");
    assert.equal((await api("HEAD", `/connections/${c3.id}`)).status, 200);
    assert.equal((await api("HEAD", "/connections/no-such-connection")).status, 404);
    assert.equal((await api("HEAD", `/users/${bob}`)).status, 200);
    assert.equal((await api("HEAD", "/users/nobody")).status, 404);
  } finally {
    await stopAll(clients);
  }
});

test("closing a connection, a user's, a group's or all but excluded gives the clients the reason", async () => {
  const cid = unique("cid");
  const group = unique("g");
  const api = (method, path, options) => rest(server, method, `/api/hubs/test${path}`, options);
  const [one, sse, lp, user, member, kept] = await Promise.all([
    client(),
    client({ transport: "ServerSentEvents" }),
    client({ transport: "LongPolling" }),
    client({ user: cid, protocol: "messagepack" }),
    client(),
    client(),
  ]);
  const ends = [one, sse, lp, user, member, kept].map((c) => closed(c, 10000));
  try {
    assert.equal((await api("DELETE", `/connections/${one.id}?reason=${encodeURIComponent("bye now")}`)).status, 200);
    assert.equal((await ends[0])?.message, "Server returned an error on close: bye now");
    assert.equal((await api("HEAD", `/connections/${one.id}`)).status, 404);
    // Closing a connection that is gone is not an error.
    assert.equal((await api("DELETE", `/connections/${one.id}`)).status, 200);

    assert.equal((await api("POST", `/users/${cid}/:closeConnections?reason=user`)).status, 204);
    assert.equal((await ends[3])?.message, "Server returned an error on close: user");

    assert.equal((await api("PUT", `/groups/${group}/connections/${member.id}`)).status, 200);
    assert.equal((await api("POST", `/groups/${group}/:closeConnections`)).status, 204);
    // Without a reason the Close carries no error.
    assert.equal(await ends[4], undefined);

    const r = await api("POST", `/:closeConnections?excluded=${kept.id}&reason=maintenance`);
    assert.equal(r.status, 204);
    assert.equal((await ends[1])?.message, "Server returned an error on close: maintenance");
    assert.equal((await ends[2])?.message, "Server returned an error on close: maintenance");
    await sleep(300);
    assert.equal(kept.state, "Connected");
    assert.equal(await kept.invoke("Echo", 5), 5);
  } finally {
    await kept.stop();
  }
});

test("tokens: missing, foreign, expired or for another URL are refused with 401; a rotated key still works", async () => {
  const path = "/api/hubs/test/:send";
  const url = `${server.url}${path}`;
  const body = { target: "Notify", arguments: [] };
  const cases = [
    [{ auth: false }, "the request has no bearer token"],
    [{ token: restToken(url, { key: "somebody-elses-key-0123" }) }, "the token's signature does not verify with any access key"],
    [{ token: restToken(url, { ttl: -120 }) }, "the token has expired"],
    [{ token: restToken(`${server.url}/api/hubs/chat/:send`) }, "the token's audience is not the URL of this request"],
    [{ token: "not-a-jwt" }, "the token is malformed or uses an unsupported algorithm"],
  ];
  for (const [options, message] of cases) {
    const r = await rest(server, "POST", path, { body, ...options });
    assert.equal(r.status, 401, message);
    assert.deepEqual(r.body, { code: "Unauthorized", message });
    assert.equal(r.headers.get("www-authenticate"), "Bearer");
  }
  // `tidings token --url` makes the token a shell script would use with curl.
  const bin = process.env.TIDINGS_BIN ?? new URL("../../target/debug/tidings", import.meta.url).pathname;
  const { stdout } = await promisify(execFile)(bin, ["token", "--url", url, "--ttl", "2m", "--access-key", ACCESS_KEY]);
  assert.equal((await rest(server, "POST", path, { body, token: stdout.trim() })).status, 202);
  const other = await rest(server, "POST", "/api/hubs/chat/:send", { body, token: stdout.trim() });
  assert.equal(other.status, 401);
  const rotated = await rest(server, "POST", path, { body, key: "an-older-rotated-key-0123" });
  assert.equal(rotated.status, 202);
  // The query string is not part of the audience.
  const withQuery = await rest(server, "POST", `${path}?api-version=2022-06-01`, { body, token: restToken(url) });
  assert.equal(withQuery.status, 202);
});

test("bad requests: 404 for unknown paths and hubs, 405, 400 for bodies and names, 413", async () => {
  const notFound = await rest(server, "POST", "/api/hubs/test/nothing", { body: {} });
  assert.equal(notFound.status, 404);
  assert.equal(notFound.body.code, "NotFound");
  const noHub = await rest(server, "POST", "/api/hubs/nohub/:send", { body: { target: "X" } });
  assert.equal(noHub.status, 404);
  assert.equal(noHub.body.message, "no hub named 'nohub'");
  const method = await rest(server, "GET", "/api/hubs/test/:send");
  assert.equal(method.status, 405);
  assert.equal(method.headers.get("allow"), "POST");
  assert.equal(method.body.code, "MethodNotAllowed");
  for (const [body, message] of [
    ["{", /^the body is not JSON/],
    [{ arguments: [] }, /^the body has no 'target'$/],
    [{ target: "" }, /^'target' is empty$/],
    [{ target: "X", arguments: { a: 1 } }, /^'arguments' must be an array$/],
    [[1, 2], /^the body must be a JSON object$/],
  ]) {
    const r = await rest(server, "POST", "/api/hubs/test/:send", { body });
    assert.equal(r.status, 400);
    assert.equal(r.body.code, "BadRequest");
    assert.match(r.body.message, message);
  }
  const empty = await rest(server, "POST", "/api/hubs/test/groups//:send", { body: { target: "X" } });
  assert.equal(empty.status, 400);
  const big = await rest(server, "POST", "/api/hubs/test/:send", { body: { target: "X", arguments: ["x".repeat(2 << 20)] } });
  assert.equal(big.status, 413);
  assert.equal(big.body.code, "PayloadTooLarge");
});
