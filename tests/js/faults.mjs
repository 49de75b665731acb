// The fault scenarios: a real cluster (three tidings servers on a
// redis-server of their own, behind HAProxy run with deploy/haproxy.cfg;
// see balancers.mjs) under a load of numbered broadcasts and group
// messages, received by official @microsoft/signalr clients, while one
// kind of fault is injected. Every delivery is accounted for, and each
// scenario states what it is expected to lose (EXPECTATIONS): the run fails
// on any loss beyond that.
//
//   node faults.mjs                 the full size, prints the figures
//   node faults.mjs --short         the short size (what the JS suite runs)
//   node faults.mjs --only kill-9,tcp-cuts
//   node faults.mjs --short --json  the rows as JSON on stdout (for the test)
//   node faults.mjs --benchmarks ../../BENCHMARKS.md
//                                   also writes the figures into that file's
//                                   "Reliability" section (replacing it)
//
// `bash scripts/faults.sh` builds the server and runs this (full size unless
// `--short`); faults.test.mjs runs the short size in the JS suite.
//
// The figures of a row (one group of clients in one scenario):
// - sent: the deliveries the cluster owed those clients: every message the
//   publisher got a completion for, once per client it was addressed to
//   (every client for a broadcast, the group's members for a group
//   message). A message whose invocation failed (its connection dropped
//   under it) may or may not have gone out: it is left out of the account
//   and counted as "uncertain" in the notes.
// - received: of those deliveries, the ones that arrived (once or more).
// - lost: sent - received.
// - duplicated: arrivals of a message at a client beyond its first.
// - recovery: for each client a fault disrupted, the time from the fault
//   (Redis back, a server stopped or killed, a TCP cut) until the first
//   message published after that moment arrives; p50 and max over those
//   clients and faults.

import { performance } from "node:perf_hooks";
import { readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import { pathToFileURL } from "node:url";
import WebSocket from "ws";
import { connect, sleep, tcpProxy } from "./helpers.mjs";
import { until } from "./cluster.mjs";
import { startBalancedCluster } from "./balancers.mjs";

/**
 * What each row of each scenario may lose. A figure that breaks its
 * expectation fails the run.
 * - lost "zero": nothing lost. "reported": exactly what the servers report
 *   as dropped is lost (/metrics and /readyz agree, and every dropped
 *   message is missed by all its recipients on the other servers and by
 *   no one else). "tolerated": measured and printed, not yet zero — a known
 *   gap, not a failure.
 * - duplicated "zero": nothing arrives twice; "tolerated": counted, not yet zero.
 * - idsKept "all": every client still has the connection id it started
 *   with; "tolerated": counted, not required.
 * - closedWithinMs, counted, logged: every client that stopped reading is
 *   closed by the server within this time, its closure counted under that
 *   status of signalr_server_connection_duration_seconds, and logged at
 *   that level.
 * Every row must also recover: each of its clients receives the last
 * messages of the run, and each client a fault disrupted receives again —
 * except as many clients as the official client's known unhandled
 * rejection stranded (see CLIENT_LIBRARY_ERROR).
 */
export const EXPECTATIONS = {
  "redis-within-buffer": {
    remote: { lost: "zero", duplicated: "zero" },
    local: { lost: "zero", duplicated: "zero" },
  },
  "redis-beyond-buffer": {
    remote: { lost: "reported", duplicated: "zero" },
    local: { lost: "zero", duplicated: "zero" },
  },
  // A server shutting down (a deploy's SIGTERM) hands its stateful
  // connections over to the others: same ids, groups and numbering, every
  // message exactly once. Plain clients get the Close with reconnect
  // allowed and come back as new connections (new ids, groups joined again
  // by the application), losing what was sent meanwhile.
  "rolling-restart": {
    stateful: { lost: "zero", duplicated: "zero", idsKept: "all" },
    plain: { lost: "tolerated", duplicated: "zero", idsKept: "tolerated" },
  },
  // With the durability mode on (`--redis-durable-ms`), a server killed
  // outright leaves its stateful connections recorded in Redis: they
  // resume on another server, same ids, every message exactly once.
  // Plain clients come back as new connections, losing what was sent
  // meanwhile.
  "kill-9": {
    stateful: { lost: "zero", duplicated: "zero", idsKept: "all" },
    plain: { lost: "tolerated", duplicated: "zero", idsKept: "tolerated" },
  },
  "tcp-cuts": {
    stateful: { lost: "zero", duplicated: "zero", idsKept: "all" },
  },
  // The slow-consumer rule: a client whose queue overflows, or to which
  // nothing could be written for the send timeout (10 s by default), is
  // closed, logged at WARN and counted as slow_consumer. The limit leaves
  // room for the socket buffers to fill first (a few MB at these rates).
  "slow-consumers": {
    healthy: { lost: "zero", duplicated: "zero" },
    slow: { closedWithinMs: 20000, counted: "slow_consumer", logged: "WARN" },
  },
};

/** The two sizes: `short` for the test suite (well under a minute), `full` for the record. */
export const SIZES = {
  short: {
    name: "short",
    rate: 50, // messages per second, broadcasts and group messages alternating
    redis: { receivers: 6, heartbeatMs: 250, warmupMs: 700, outageMs: 1000, afterMs: 700, buffer: 20 },
    deploy: { stateful: 3, plain: 3, warmupMs: 500, afterMs: 1000, waitForBalancer: false },
    cuts: { stateful: 4, warmupMs: 300, durationMs: 4000, everyMs: 700, settledMs: 200 },
    slow: { healthy: 3, slow: 3, rate: 200, payload: 16384, warmupMs: 300 },
  },
  full: {
    name: "full",
    rate: 50,
    redis: { receivers: 150, heartbeatMs: 2000, warmupMs: 5000, outageMs: 10000, afterMs: 5000, buffer: 100 },
    deploy: { stateful: 75, plain: 75, warmupMs: 3000, afterMs: 5000, waitForBalancer: true },
    cuts: { stateful: 50, warmupMs: 2000, durationMs: 60000, everyMs: 700, settledMs: 200 },
    slow: { healthy: 10, slow: 50, rate: 100, payload: 16384, warmupMs: 2000 },
  },
};

const now = () => performance.now();
const GROUP = "faults";

/**
 * Automatic reconnect that keeps trying for a minute (the client's default
 * gives up after four attempts, too few while a whole cluster restarts).
 */
const RETRY = {
  nextRetryDelayInMilliseconds: ({ previousRetryCount, elapsedMilliseconds }) =>
    elapsedMilliseconds > 60000 ? null : previousRetryCount === 0 ? 0 : Math.min(50 * 2 ** previousRetryCount, 1000),
};

/** Runs `f` over `items`, `width` at a time. */
async function inBatches(items, width, f) {
  const out = [];
  for (let i = 0; i < items.length; i += width) out.push(...(await Promise.all(items.slice(i, i + width).map(f))));
  return out;
}

/** What the publisher sent: per message key, when and to whom. */
class Ledger {
  constructor() {
    /** key → { at, group } for messages whose invocation completed. */
    this.sent = new Map();
    /** Keys whose invocation failed: they may or may not have gone out. */
    this.uncertain = new Set();
    /** key → publication time, of every message tried. */
    this.at = new Map();
  }
}

/**
 * A client that records every numbered message it receives. `stateful`:
 * with `withStatefulReconnect()`; every receiver has automatic reconnect
 * and joins the group again after a reconnect (a new connection has no
 * groups), as an application does in `onreconnected`.
 */
async function receiver(target, { name, stateful = false, inGroup = false, reconnect = true, serverTimeout } = {}) {
  const r = { name, stateful, inGroup, got: new Map(), sockets: [], reconnects: 0, lastArrival: 0 };
  // The client's sockets, seen as they open: a new one means the client
  // was disrupted (and gives the slow-consumer scenario a socket to pause).
  const Tracked = class extends WebSocket {
    constructor(...args) {
      super(...args);
      r.sockets.push({ at: now(), ws: this });
    }
  };
  r.connection = await connect(target, "/hubs/test", "json", {
    WebSocket: Tracked,
    statefulReconnect: stateful,
    reconnect: reconnect ? RETRY : undefined,
    serverTimeout,
    before(connection) {
      const note = (message) => {
        const at = now();
        r.lastArrival = at;
        const seen = r.got.get(message.k);
        if (seen) seen.count += 1;
        else r.got.set(message.k, { count: 1, at });
      };
      connection.on("Broadcast", note);
      connection.on("GroupMessage", note);
      connection.onreconnected(async () => {
        r.reconnects += 1;
        if (r.inGroup) await connection.invoke("JoinGroup", GROUP).catch(() => {});
      });
    },
  });
  if (inGroup) await r.connection.invoke("JoinGroup", GROUP);
  r.firstId = r.connection.connectionId;
  return r;
}

/** Stops receivers, without waiting on a socket that no longer reads. */
async function stopAll(receivers) {
  await Promise.all(
    receivers.map(async (r) => {
      for (const { ws } of r.sockets) if (ws.isPaused) ws.terminate();
      await Promise.race([r.connection.stop().catch(() => {}), sleep(3000)]);
    }),
  );
}

/**
 * Publishes numbered messages at `rate` per second, alternating a
 * broadcast and a message to the group, each invoked and awaited (a
 * message counts as sent once its completion arrived).
 */
async function publisher(target, ledger, { rate, payload = 0 }) {
  const connection = await connect(target, "/hubs/test", "json", { reconnect: RETRY });
  const filler = "x".repeat(payload);
  let running = true;
  let n = 0;
  const period = 1000 / rate;
  const loop = (async () => {
    const start = now();
    while (running) {
      const due = start + n * period;
      if (due > now()) await sleep(due - now());
      if (!running) break;
      if (connection.state !== "Connected") {
        // Reconnecting: nothing is sent, the schedule moves on.
        n += 1;
        continue;
      }
      const group = n % 2 === 1;
      const key = `${group ? "g" : "b"}${n}`;
      n += 1;
      ledger.at.set(key, now());
      try {
        if (group) await connection.invoke("SendToGroup", GROUP, { k: key, p: filler });
        else await connection.invoke("Broadcast", { k: key, p: filler });
        ledger.sent.set(key, { at: ledger.at.get(key), group });
      } catch {
        ledger.uncertain.add(key);
      }
    }
  })();
  return {
    connection,
    async stop() {
      running = false;
      await loop;
      await connection.stop().catch(() => {});
    },
  };
}

/** Waits until every receiver has every message owed to it, or arrivals stop for `quietMs`. */
async function settle(receivers, ledger, { quietMs = 1500, timeoutMs = 15000 } = {}) {
  const deadline = now() + timeoutMs;
  const complete = () =>
    receivers.every((r) => [...ledger.sent].every(([key, m]) => (m.group && !r.inGroup) || r.got.has(key)));
  while (now() < deadline && !complete()) {
    const last = Math.max(0, ...receivers.map((r) => r.lastArrival));
    if (now() - last > quietMs) break;
    await sleep(100);
  }
}

/** The figures of one group of receivers. */
function account(receivers, ledger) {
  let sent = 0;
  let received = 0;
  let duplicated = 0;
  /** key → receivers that missed it */
  const missed = new Map();
  for (const r of receivers) {
    for (const [key, m] of ledger.sent) {
      if (m.group && !r.inGroup) continue;
      sent += 1;
      if (r.got.has(key)) received += 1;
      else if (missed.has(key)) missed.get(key).push(r);
      else missed.set(key, [r]);
    }
    for (const { count } of r.got.values()) duplicated += count - 1;
  }
  return { sent, received, lost: sent - received, duplicated, missed };
}

/**
 * Per fault ({ at, affected(r) }), for each affected receiver `r`: the
 * time `t` until the first message published after the fault arrived
 * (Infinity if none did).
 */
function recoveries(receivers, ledger, faults) {
  const times = [];
  for (const fault of faults) {
    for (const r of receivers) {
      if (!fault.affected(r)) continue;
      let first = Infinity;
      for (const [key, { at }] of r.got) {
        const published = ledger.at.get(key);
        if (published !== undefined && published >= fault.at && at < first) first = at;
      }
      times.push({ r, t: first - fault.at });
    }
  }
  return times;
}

/** Affected by the fault at `from`: a receiver that opened a socket before `to`. */
const reopened = (from, to) => (r) => r.sockets.some((s) => s.at > from && s.at < to);

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** How many receivers got nothing of the run's last second (they never recovered). */
function notRecovered(receivers, ledger) {
  const last = Math.max(...[...ledger.sent.values()].map((m) => m.at));
  const late = [...ledger.sent].filter(([, m]) => m.at > last - 1000);
  return receivers.filter((r) => !late.some(([key, m]) => (!m.group || r.inGroup) && r.got.has(key))).length;
}

/**
 * One row of a result: the figures of `receivers`, checked against the
 * row's expectation (`checks` and `notes`: the scenario's own, added).
 */
function row(scenario, label, title, receivers, ledger, faults, { expect, checks = [], notes = [] } = {}) {
  const figures = account(receivers, ledger);
  const recovered = recoveries(receivers, ledger, faults);
  const times = recovered.map(({ t }) => t).sort((a, b) => a - b);
  const idsKept = receivers.filter((r) => r.connection.connectionId === r.firstId).length;
  const stuck = notRecovered(receivers, ledger);
  const all = [...checks];
  if (expect.lost === "zero") all.push({ what: "nothing lost", ok: figures.lost === 0, detail: `${figures.lost} lost` });
  if (expect.duplicated === "zero") {
    all.push({ what: "nothing duplicated", ok: figures.duplicated === 0, detail: `${figures.duplicated} duplicated` });
  }
  if (expect.idsKept === "all") {
    all.push({ what: "connection ids kept", ok: idsKept === receivers.length, detail: `${idsKept}/${receivers.length}` });
  }
  const never = new Set(recovered.filter(({ t }) => !Number.isFinite(t)).map(({ r }) => r)).size;
  all.push({ what: "every client receives again", ok: stuck === 0, stranded: stuck, detail: `${stuck} without the last second's messages` });
  all.push({ what: "every disrupted client recovers", ok: never === 0, stranded: never, detail: `${never} never did (clients)` });
  const finite = times.filter(Number.isFinite);
  return {
    scenario,
    label,
    title,
    clients: receivers.length,
    sent: figures.sent,
    received: figures.received,
    lost: figures.lost,
    duplicated: figures.duplicated,
    recovery: { count: times.length, p50: percentile(finite, 50), max: finite.length ? finite.at(-1) : null },
    idsKept,
    expect,
    checks: all,
    notes: [...notes, ...(expect.idsKept ? [`connection ids kept, ${title}: ${idsKept}/${receivers.length}`] : [])],
    ok: all.every((c) => c.ok),
  };
}

/** The exposition of `server`'s /metrics. */
async function scrape(server) {
  return (await fetch(`${server.url}/metrics`)).text();
}

/** The value of an unlabelled metric at `server`. */
async function metric(server, name) {
  const text = await scrape(server);
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

/** The connections open at `server`, all hubs and transports. */
async function activeConnections(server) {
  const text = await scrape(server);
  return text
    .split("\n")
    .filter((l) => l.startsWith("signalr_server_active_connections{"))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

/** Connections closed at `server` so far, by `signalr_connection_status`. */
async function closures(server) {
  const text = await scrape(server);
  const counts = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^signalr_server_connection_duration_seconds_count\{.*signalr_connection_status="([^"]+)".*\} (\S+)/);
    if (m) counts[m[1]] = (counts[m[1]] ?? 0) + Number(m[2]);
  }
  return counts;
}

async function readyz(server) {
  const response = await fetch(`${server.url}/readyz`);
  return { status: response.status, body: await response.json() };
}

/** Starts the cluster, runs `f`, and always stops what it started. */
async function withCluster(args, f) {
  const cluster = await startBalancedCluster("haproxy", { n: 3, args });
  try {
    return await f(cluster);
  } finally {
    await cluster.close();
  }
}

/**
 * Redis killed for a while under load, the publisher on server 1 and the
 * receivers spread over all three servers: the outbox of server 1 keeps
 * the cross-server messages (within the buffer: all of them; beyond it:
 * the drop policy drops some, and the servers count them).
 */
async function redisOutage(name, size, beyond) {
  const s = size.redis;
  // A server learns of the others at its first heartbeat, and after an
  // outage waits only for the servers it knew to subscribe again before it
  // flushes its buffer: the warm-up must outlast a heartbeat, as it does in
  // any cluster that has been up for a while.
  const args = ["--redis-heartbeat-ms", String(s.heartbeatMs)];
  if (beyond) args.push("--redis-buffer-messages", String(s.buffer));
  return withCluster(args, async (cluster) => {
    const ledger = new Ledger();
    const receivers = await inBatches(
      Array.from({ length: s.receivers }, (_, i) => i),
      10,
      (i) => receiver(cluster.servers[i % 3], { name: `r${i}`, inGroup: i % 2 === 0 }),
    );
    receivers.forEach((r, i) => (r.server = i % 3));
    const pub = await publisher(cluster.servers[0], ledger, { rate: size.rate });
    const notes = [];
    let restarted;
    let backAfter;
    try {
      await sleep(s.warmupMs);
      await cluster.redis.kill();
      await until(async () => (await readyz(cluster.servers[0])).status === 503, "the outage in /readyz");
      await sleep(s.outageMs);
      await cluster.redis.restart();
      restarted = now();
      await until(
        async () => (await Promise.all(cluster.servers.map(readyz))).every((r) => r.status === 200),
        "every server ready again",
        30000,
      );
      backAfter = now() - restarted;
      await sleep(s.afterMs);
    } finally {
      await pub.stop();
    }
    await settle(receivers, ledger);
    const remote = receivers.filter((r) => r.server !== 0);
    const local = receivers.filter((r) => r.server === 0);
    const dropped = await Promise.all(cluster.servers.map((server) => metric(server, "tidings_backplane_messages_dropped_total")));
    const reported = await Promise.all(cluster.servers.map(async (server) => (await readyz(server)).body.backplaneStatus.dropped));
    notes.push(
      `Redis down ${s.outageMs} ms at ${size.rate} msg/s; every server ready again ${Math.round(backAfter)} ms after Redis restarted`,
      `dropped per server: /metrics ${dropped.join(", ")}; /readyz ${reported.join(", ")}` +
        (beyond ? ` (buffer: ${s.buffer} messages)` : ""),
    );
    const checks = [];
    const sum = (xs) => xs.reduce((a, b) => a + b, 0);
    const remoteRow = () => {
      const figures = account(remote, ledger);
      if (!beyond) {
        checks.push({ what: "nothing dropped", ok: sum(dropped) === 0 && sum(reported) === 0, detail: `${sum(dropped)} dropped` });
        return checks;
      }
      // Each dropped message is one publication of server 1 that no
      // client of the other servers got, and every client of server 1 got.
      const missedKeys = [...figures.missed.keys()];
      const whole = [...figures.missed].every(([key, who]) => {
        const m = ledger.sent.get(key);
        return who.length === remote.filter((r) => !m.group || r.inGroup).length;
      });
      const owed = sum(missedKeys.map((key) => remote.filter((r) => !ledger.sent.get(key).group || r.inGroup).length));
      checks.push(
        { what: "/metrics and /readyz agree", ok: sum(dropped) === sum(reported), detail: `${sum(dropped)} vs ${sum(reported)}` },
        { what: "drops reported", ok: sum(dropped) > 0, detail: `${sum(dropped)} dropped` },
        {
          what: "messages missed = messages reported dropped",
          ok: missedKeys.length === sum(dropped),
          detail: `${missedKeys.length} missed, ${sum(dropped)} reported`,
        },
        { what: "a dropped message is missed by all its remote recipients", ok: whole, detail: whole ? "yes" : "no" },
        { what: "lost deliveries = drops × their recipients", ok: owed === figures.lost, detail: `${figures.lost} lost, ${owed} owed` },
      );
      return checks;
    };
    const faults = [{ at: restarted, affected: (r) => r.server !== 0 }];
    const rows = [
      row(name, "remote", "on the other servers", remote, ledger, faults, {
        expect: EXPECTATIONS[name].remote,
        checks: remoteRow(),
        notes,
      }),
      row(name, "local", "on the publisher's server", local, ledger, [], { expect: EXPECTATIONS[name].local }),
    ];
    await stopAll(receivers);
    return rows;
  });
}

/** Stateful and plain receivers through the balancer, and a publisher through it too. */
async function balancedLoad(cluster, d) {
  const specs = [
    ...Array.from({ length: d.stateful }, (_, i) => ({ name: `s${i}`, stateful: true, inGroup: i % 2 === 0 })),
    ...Array.from({ length: d.plain }, (_, i) => ({ name: `p${i}`, stateful: false, inGroup: i % 2 === 0 })),
  ];
  return inBatches(specs, 10, (spec) => receiver(cluster, spec));
}

/** Rows of the stateful and the plain receivers after a scenario through the balancer. */
function statefulAndPlain(name, receivers, ledger, faults, notes) {
  const rows = [];
  for (const [label, title] of [
    ["stateful", "withStatefulReconnect()"],
    ["plain", "automatic reconnect only"],
  ]) {
    const group = receivers.filter((r) => r.stateful === (label === "stateful"));
    if (group.length === 0) continue;
    rows.push(
      row(name, label, title, group, ledger, faults, {
        expect: EXPECTATIONS[name][label],
        notes: rows.length === 0 ? notes : [],
      }),
    );
  }
  return rows;
}

/**
 * Every server of the cluster, one after the other, gets SIGTERM (it
 * closes its connections, reconnect allowed, and exits) and is started
 * again on its port, as a rolling deploy does.
 */
async function rollingRestart(size) {
  const d = size.deploy;
  return withCluster([], async (cluster) => {
    const ledger = new Ledger();
    const receivers = await balancedLoad(cluster, d);
    const pub = await publisher(cluster, ledger, { rate: size.rate });
    const steps = [];
    try {
      await sleep(d.warmupMs);
      for (let i = 0; i < cluster.servers.length; i++) {
        const at = now();
        const exited = await cluster.stop(i, "SIGTERM");
        const down = now() - at;
        await cluster.start(i);
        if (d.waitForBalancer) {
          // Back in the balancer's rotation before the next one goes.
          const from = (await cluster.requests()).length;
          await until(
            async () => {
              await fetch(`${cluster.url}/hubs/test/negotiate?negotiateVersion=1`, { method: "POST" }).catch(() => {});
              await sleep(100);
              return (await cluster.requests(from)).some((r) => r.server === i && r.status === 200);
            },
            `server ${i + 1} back in the balancer`,
            20000,
          );
        }
        steps.push({ at, down, exited });
      }
      await sleep(d.afterMs);
    } finally {
      await pub.stop();
    }
    await settle(receivers, ledger);
    const faults = steps.map((step, i) => ({ at: step.at, affected: reopened(step.at, steps[i + 1]?.at ?? Infinity) }));
    const notes = [
      `${cluster.servers.length} servers restarted one by one (SIGTERM, then started again${
        d.waitForBalancer ? ", back in HAProxy's rotation before the next" : ""
      }); each exited ${steps.map((s) => Math.round(s.down)).join(", ")} ms after SIGTERM`,
      `uncertain (publisher's invocation failed): ${ledger.uncertain.size}`,
    ];
    const rows = statefulAndPlain("rolling-restart", receivers, ledger, faults, notes);
    await stopAll(receivers);
    return rows;
  });
}

/** The durability mode's retention in the kill -9 scenario. */
const DURABLE_RETENTION_MS = 60000;

/** One server of three is killed (SIGKILL) under load, and not restarted. */
async function killNine(size) {
  const d = size.deploy;
  return withCluster(["--redis-durable-ms", String(DURABLE_RETENTION_MS)], async (cluster) => {
    const ledger = new Ledger();
    const receivers = await balancedLoad(cluster, d);
    const pub = await publisher(cluster, ledger, { rate: size.rate });
    let at;
    let victim;
    try {
      await sleep(d.warmupMs);
      // The server holding the most connections, so that the crash hits
      // clients of both kinds even at the short size.
      const held = await Promise.all(cluster.servers.map(activeConnections));
      victim = held.indexOf(Math.max(...held));
      at = now();
      await cluster.stop(victim, "SIGKILL");
      await sleep(d.afterMs + 2000);
    } finally {
      await pub.stop();
    }
    await settle(receivers, ledger);
    const hit = receivers.filter(reopened(at, Infinity));
    const resumed = hit.filter((r) => r.connection.connectionId === r.firstId).length;
    const notes = [
      `server ${victim + 1} of 3 killed (SIGKILL) under load, not restarted; ${hit.length} of ${receivers.length} clients lost their socket, ` +
        `${resumed} of them resumed their connection (a stateful-reconnect socket that reached its server through the killed one)`,
      `uncertain (publisher's invocation failed): ${ledger.uncertain.size}`,
    ];
    const rows = statefulAndPlain("kill-9", receivers, ledger, [{ at, affected: reopened(at, Infinity) }], notes);
    await stopAll(receivers);
    return rows;
  });
}

/**
 * Stateful-reconnect clients behind a TCP proxy (in front of HAProxy) that
 * cuts every connection periodically: each cut is a dropped network
 * connection that the client must resume transparently. A cut spares the
 * connections opened in the last `settledMs`: the official client tries
 * to resume only once, and a cut during that attempt (or during a new
 * connection's handshake, where the client then throws an unhandled
 * rejection out of its socket's close handler) makes it give the
 * connection up — the client's limit, which this scenario is not about.
 */
async function tcpCuts(size) {
  const c = size.cuts;
  return withCluster([], async (cluster) => {
    const proxy = await tcpProxy(cluster);
    try {
      const ledger = new Ledger();
      const receivers = await inBatches(
        Array.from({ length: c.stateful }, (_, i) => i),
        10,
        (i) => receiver(proxy, { name: `s${i}`, stateful: true, inGroup: i % 2 === 0 }),
      );
      // The publisher goes straight to the balancer: the cuts are the receivers'.
      const pub = await publisher(cluster, ledger, { rate: size.rate });
      const cuts = [];
      try {
        await sleep(c.warmupMs);
        const end = now() + c.durationMs;
        while (now() < end) {
          cuts.push(now());
          proxy.cut({ olderThanMs: c.settledMs });
          await sleep(c.everyMs);
        }
        await sleep(1000);
      } finally {
        await pub.stop();
      }
      await settle(receivers, ledger);
      const faults = cuts.map((at, i) => ({ at, affected: reopened(at, cuts[i + 1] ?? Infinity) }));
      const fallbacks = receivers.reduce((n, r) => n + r.reconnects, 0);
      const notes = [
        `${cuts.length} cuts, one every ${c.everyMs} ms, of every connection between the clients and HAProxy open for ${c.settledMs} ms or more`,
        `full reconnects (new connection instead of a resumed one): ${fallbacks}`,
      ];
      const rows = [
        row("tcp-cuts", "stateful", "withStatefulReconnect()", receivers, ledger, faults, {
          expect: EXPECTATIONS["tcp-cuts"].stateful,
          notes,
        }),
      ];
      await stopAll(receivers);
      return rows;
    } finally {
      await proxy.close();
    }
  });
}

/**
 * Clients that stop reading (their socket paused: the TCP window fills)
 * while large broadcasts keep coming, beside healthy clients on the same
 * server. Reported: how long until the server closes each stuck client,
 * and that the healthy ones lose nothing meanwhile.
 */
async function slowConsumers(size) {
  const s = size.slow;
  const expect = EXPECTATIONS["slow-consumers"].slow;
  const limit = expect.closedWithinMs;
  return withCluster(["--log-format", "json"], async (cluster) => {
    const server = cluster.servers[0];
    const ledger = new Ledger();
    const observer = await connect(server, "/hubs/test", "json");
    const closedAt = new Map();
    observer.on("ClientDisconnected", (id, error) => closedAt.set(id, { at: now(), error }));
    await observer.invoke("Observe");
    const healthy = await inBatches(
      Array.from({ length: s.healthy }, (_, i) => i),
      10,
      (i) => receiver(server, { name: `h${i}`, inGroup: true }),
    );
    // No automatic reconnect, and a client-side server timeout longer than
    // the run: a client that stops reading would otherwise give up by
    // itself after 30 s of silence, and its close would be taken for the
    // server's.
    const slow = await inBatches(
      Array.from({ length: s.slow }, (_, i) => i),
      10,
      (i) => receiver(server, { name: `x${i}`, inGroup: true, reconnect: false, serverTimeout: 10 * limit }),
    );
    const statusesBefore = await closures(server);
    const pub = await publisher(server, ledger, { rate: s.rate, payload: s.payload });
    let stalled;
    let statusesAfter = {};
    try {
      await sleep(s.warmupMs);
      stalled = now();
      for (const r of slow) r.sockets.at(-1).ws.pause();
      const ids = slow.map((r) => r.firstId);
      const deadline = stalled + limit;
      while (now() < deadline && !ids.every((id) => closedAt.has(id))) await sleep(100);
      statusesAfter = await closures(server);
    } finally {
      await pub.stop();
    }
    await settle(healthy, ledger);
    const times = slow
      .map((r) => closedAt.get(r.firstId))
      .filter(Boolean)
      .map((c) => c.at - stalled)
      .sort((a, b) => a - b);
    const closedBy = Object.fromEntries(
      Object.entries(statusesAfter)
        .map(([status, n]) => [status, n - (statusesBefore[status] ?? 0)])
        .filter(([, n]) => n > 0),
    );
    const counted = Object.entries(closedBy).map(([status, n]) => `${status} ${n}`);
    // The server's log line for each (JSON lines): level, and the rule that fired.
    const lines = server
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .filter((l) => l.fields?.message === "closing slow consumer");
    const logged = slow
      .map((r) => lines.find((l) => l.fields.connection_id === r.firstId))
      .filter((l) => l !== undefined && l.level === expect.logged);
    const rules = [...new Set(logged.map((l) => l.fields.rule))];
    const reasons = [...new Set(slow.map((r) => closedAt.get(r.firstId)).filter(Boolean).map((c) => c.error ?? "no error"))];
    const notes = [
      `${s.slow} clients stop reading ${s.warmupMs} ms into ${s.rate} broadcasts and group messages per second of ${s.payload} bytes` +
        (s.outboundBuffer ? ` (--outbound-buffer ${s.outboundBuffer})` : " (default settings)"),
      `closed by the server: ${times.length}/${s.slow} within ${limit / 1000} s` +
        (times.length ? `, after ${Math.round(times[0])}–${Math.round(times.at(-1))} ms` : "") +
        (reasons.length ? `; reason: ${reasons.join(" / ")}` : ""),
      `closures counted in signalr_server_connection_duration_seconds by then, by status: ${counted.join(", ") || "none"}`,
      `logged at ${expect.logged} ("closing slow consumer"): ${logged.length}/${s.slow}` + (rules.length ? `, rule: ${rules.join(" / ")}` : ""),
    ];
    const healthyRow = row("slow-consumers", "healthy", "reading, beside the stuck ones", healthy, ledger, [], {
      expect: EXPECTATIONS["slow-consumers"].healthy,
      notes,
    });
    const slowRow = {
      scenario: "slow-consumers",
      label: "slow",
      title: "stopped reading",
      clients: slow.length,
      sent: null,
      received: null,
      lost: null,
      duplicated: null,
      recovery: { count: times.length, p50: percentile(times, 50), max: times.at(-1) ?? null, what: "closed after" },
      expect,
      checks: [
        {
          what: `closed by the server within ${limit / 1000} s`,
          ok: times.length === slow.length,
          detail: `${times.length}/${slow.length}`,
        },
        {
          what: `counted as ${expect.counted}`,
          ok: (closedBy[expect.counted] ?? 0) === slow.length,
          detail: counted.join(", ") || "none",
        },
        {
          what: `logged at ${expect.logged}`,
          ok: logged.length === slow.length,
          detail: `${logged.length}/${slow.length}`,
        },
      ],
      notes: [],
    };
    slowRow.ok = slowRow.checks.every((c) => c.ok);
    await stopAll([...healthy, ...slow]);
    await observer.stop();
    return [healthyRow, slowRow];
  });
}

/** The scenarios, in the order they run. */
export const SCENARIOS = [
  { name: "redis-within-buffer", title: "Redis outage within the backplane buffer", run: (size) => redisOutage("redis-within-buffer", size, false) },
  { name: "redis-beyond-buffer", title: "Redis outage beyond the backplane buffer", run: (size) => redisOutage("redis-beyond-buffer", size, true) },
  { name: "rolling-restart", title: "rolling restart of every server through HAProxy", run: rollingRestart },
  { name: "kill-9", title: "kill -9 of one server of three", run: killNine },
  { name: "tcp-cuts", title: "TCP cuts under stateful reconnect", run: tcpCuts },
  { name: "slow-consumers", title: "clients that stop reading", run: slowConsumers },
];

const ms = (x) => (x === null || x === undefined ? "–" : Number.isFinite(x) ? String(Math.round(x)) : "never");
const num = (x) => (x === null || x === undefined ? "–" : String(x));

function expectation(expect) {
  if (expect.closedWithinMs !== undefined) {
    return `closed within ${expect.closedWithinMs / 1000} s, counted as ${expect.counted}, logged at ${expect.logged}`;
  }
  const parts = [`lost ${expect.lost === "tolerated" ? "reported, not yet zero" : expect.lost === "reported" ? "= reported drops" : "0"}`];
  if (expect.duplicated === "zero") parts.push("dup 0");
  if (expect.duplicated === "tolerated") parts.push("dup reported, not yet zero");
  if (expect.idsKept === "all") parts.push("ids kept");
  return parts.join(", ");
}

/** The rows as a Markdown table. */
export function table(rows) {
  const lines = [
    "| scenario | clients | sent | received | lost | duplicated | recovery p50 / max (ms) | expected | result |",
    "|---|---|--:|--:|--:|--:|--:|---|---|",
  ];
  for (const r of rows) {
    const recovery =
      r.recovery.count === 0 ? "–" : `${r.recovery.what ? `${r.recovery.what} ` : ""}${ms(r.recovery.p50)} / ${ms(r.recovery.max)}`;
    lines.push(
      `| ${r.scenario} | ${r.clients} ${r.title} | ${num(r.sent)} | ${num(r.received)} | ${num(r.lost)} | ${num(r.duplicated)} | ${recovery} | ${expectation(r.expect)} | ${r.ok ? "as expected" : "**UNEXPECTED**"} |`,
    );
  }
  return lines.join("\n");
}

/** What failed, one line per broken check. */
export function failures(rows) {
  return rows.flatMap((r) => r.checks.filter((c) => !c.ok).map((c) => `${r.scenario} / ${r.label}: ${c.what}: ${c.detail}`));
}

/** Notes per scenario, as Markdown list items. */
function notes(rows) {
  const lines = [];
  for (const r of rows) for (const n of r.notes) lines.push(`- ${r.scenario}: ${n}`);
  return lines.join("\n");
}

/** The "Reliability" section of BENCHMARKS.md for a run. */
export function section(rows, meta) {
  return `## Reliability

Written by \`bash scripts/faults.sh\` (the full size; \`--short\` is the
version the test suite runs), which replaces this section on every run.

- Run of ${meta.date}, server binary \`${meta.bin}\`, Node ${process.version}.
- Machine: ${meta.machine}; load average ${meta.load} when the run began
  (other work shares the machine, and the recovery times include it).

Each scenario starts three \`tidings\` servers on a \`redis-server\` of
their own behind HAProxy (\`deploy/haproxy.cfg\`), puts ${meta.rate} messages
per second on them (broadcasts and group messages alternating, each
invoked by an official-client publisher) and receives them with official
\`@microsoft/signalr\` clients over WebSockets (half of them in the
group). *sent* is the deliveries owed (each message whose invocation
completed, once per client it was addressed to), *received* those that
arrived, *lost* the difference, *duplicated* the arrivals beyond the
first; *recovery* is, per client a fault disrupted, the time from the
fault until the first message published after it arrived. The
expectations are those of \`EXPECTATIONS\` in \`tests/js/faults.mjs\`;
"reported, not yet zero" marks a known gap (clients without stateful
reconnect start new connections when a server goes away). The kill -9
scenario runs its servers in the durability mode (\`--redis-durable-ms\`).

${table(rows)}

${notes(rows)}
`;
}

/** Replaces (or appends) the "Reliability" section of the file at `path`. */
export async function writeSection(path, text) {
  const old = await readFile(path, "utf8");
  const start = old.search(/^## Reliability$/m);
  let out;
  if (start < 0) {
    out = `${old.trimEnd()}\n\n${text}`;
  } else {
    const rest = old.slice(start + 1);
    const next = rest.search(/^## /m);
    const end = next < 0 ? old.length : start + 1 + next;
    out = `${old.slice(0, start)}${text}${next < 0 ? "" : `\n${old.slice(end)}`}`;
  }
  await writeFile(path, out);
}

/**
 * The official client (10.0) with stateful reconnect on, when its socket
 * closes during the handshake of a new connection (a reconnect landing on
 * a server that is shutting down), tries to resume a connection that never
 * started, fails, and throws this out of the socket's close handler: an
 * unhandled rejection, which ends a Node process. That client is left
 * waiting for a handshake that will not come (until its server timeout,
 * longer than what is left of the run). The run counts these, goes on,
 * and excuses as many clients that did not receive again; any other
 * unhandled rejection still ends it.
 */
const CLIENT_LIBRARY_ERROR = /^HttpConnection\.stopConnection\(.*\) was called while the connection is still in the connecting state\.$/;
let clientLibraryErrors = 0;

function tolerateClientLibraryErrors() {
  process.on("unhandledRejection", (error) => {
    if (error instanceof Error && CLIENT_LIBRARY_ERROR.test(error.message)) {
      clientLibraryErrors += 1;
      return;
    }
    throw error;
  });
}

/** Runs the scenarios (all, or those named in `only`) at `size`. */
export async function runScenarios(size, { only = null, log = () => {} } = {}) {
  const rows = [];
  for (const scenario of SCENARIOS) {
    if (only && !only.includes(scenario.name)) continue;
    const start = now();
    const errorsBefore = clientLibraryErrors;
    log(`${scenario.name}: ${scenario.title}…`);
    const result = await scenario.run(size);
    log(`${scenario.name}: done in ${((now() - start) / 1000).toFixed(1)} s`);
    const errors = clientLibraryErrors - errorsBefore;
    // Each such error strands at most one client: excuse that many.
    for (const what of ["every client receives again", "every disrupted client recovers"]) {
      const failed = result.flatMap((r) => r.checks.filter((c) => c.what === what && !c.ok));
      if (failed.length && failed.reduce((n, c) => n + c.stranded, 0) <= errors) {
        for (const c of failed) {
          c.ok = true;
          c.detail += " (stranded by the official client's unhandled rejection)";
        }
      }
    }
    for (const r of result) r.ok = r.checks.every((c) => c.ok);
    if (errors > 0) {
      const stranded = result.reduce((n, r) => n + (r.checks.find((c) => c.what === "every client receives again")?.stranded ?? 0), 0);
      result[0].notes.push(
        `the official client threw ${errors} unhandled rejection(s) out of a socket's close handler ("HttpConnection.stopConnection(…) was called while the connection is still in the connecting state": a stateful-reconnect client whose new connection's socket closed during the handshake); clients that did not receive again: ${stranded}`,
      );
    }
    rows.push(...result);
  }
  return rows;
}

async function main(argv) {
  const short = argv.includes("--short");
  const size = short ? SIZES.short : SIZES.full;
  const onlyAt = argv.indexOf("--only");
  const only = onlyAt >= 0 ? argv[onlyAt + 1].split(",") : null;
  const benchAt = argv.indexOf("--benchmarks");
  const json = argv.includes("--json");
  const log = (line) => process.stderr.write(`${line}\n`);
  const load = os.loadavg()[0].toFixed(1);
  tolerateClientLibraryErrors();
  const rows = await runScenarios(size, { only, log });
  if (json) {
    // For faults.test.mjs: the rows alone on stdout.
    process.stdout.write(JSON.stringify(rows));
    process.exitCode = failures(rows).length ? 1 : 0;
    return;
  }
  console.log(table(rows));
  console.log();
  console.log(notes(rows));
  if (benchAt >= 0) {
    const cpu = os.cpus();
    await writeSection(
      argv[benchAt + 1],
      section(rows, {
        date: `${new Date().toISOString().slice(0, 16).replace("T", ", ")} UTC`,
        machine: `${cpu.length} × ${cpu[0]?.model?.trim() ?? "unknown CPU"}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
        bin: (process.env.TIDINGS_BIN ?? "target/debug/tidings").replace(/^.*\/target\//, "target/"),
        rate: size.rate,
        load,
      }),
    );
  }
  const failed = failures(rows);
  if (failed.length) {
    console.log(`\nUNEXPECTED:\n${failed.map((f) => `- ${f}`).join("\n")}`);
    process.exitCode = 1;
  } else {
    console.log("\nevery scenario as expected");
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await main(process.argv.slice(2));
}
