// What the durability mode of the Redis backplane (`--redis-durable-ms`)
// costs, measured against the mode off. Per round and mode, a fresh
// `redis-server` on a free port and one tidings server (`--test-hub
// --redis …`, plus `--redis-durable-ms` when on) serve official-client
// connections built with `withStatefulReconnect()` over WebSockets (JSON):
//
// * echo: `--echo-clients` clients each invoke `Echo` back-to-back;
// * broadcast: `--listeners` listeners receive what one sender broadcasts
//   (`Broadcast`, each invocation awaited before the next); every listener
//   must receive every broadcast once, in order, or the run fails.
//
// Each phase warms up, then measures for `--seconds`: messages (echo) or
// deliveries at the listeners (broadcast) per second, the CPU time of the
// server (/proc/<pid>/stat) and of Redis (INFO cpu) per message, the
// commands Redis ran (INFO commandstats), and Redis memory (INFO memory):
// before and after the window, and once the phase's clients closed.
// Rounds alternate the modes (off, on, off, on, …) so that drifting load
// on a shared machine hits both alike.
//
//   node durability-cost.mjs                         3 rounds of each mode, 50 echo clients,
//                                                    300 listeners, 10 s after 2 s warm-up
//   node durability-cost.mjs --rounds 1 --seconds 2  shorter
//   node durability-cost.mjs --benchmarks ../../BENCHMARKS.md   also writes the section
//                                                    between the durability markers
//   node durability-cost.mjs --json                  the rows as JSON on stdout (nothing else)
//
// TIDINGS_BIN names the server binary (default: target/release/tidings).

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import { relative } from "node:path";
import { pathToFileURL } from "node:url";
import * as signalR from "@microsoft/signalr";
import { startProgram } from "../server.mjs";
import { startRedis } from "./cluster.mjs";

const BIN = process.env.TIDINGS_BIN ?? new URL("../../target/release/tidings", import.meta.url).pathname;
export const RETENTION_MS = 60000;
const TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
/** The argument of every Echo and Broadcast besides its number: 64 bytes. */
const TEXT = "x".repeat(64);
export const BEGIN = "<!-- durability:begin (written by `bash scripts/bench.sh --durability`) -->";
export const END = "<!-- durability:end -->";

export const DEFAULTS = { rounds: 3, echoClients: 50, listeners: 300, seconds: 10, warmup: 2 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** CPU seconds (user + system) of process `pid` so far. */
function processCpu(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces) start at state.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

/** Parses one RESP reply at `at` of `buffer`: [value, next offset], or null if incomplete. */
function parseReply(buffer, at) {
  const line = buffer.indexOf("\r\n", at);
  if (line < 0) return null;
  const head = buffer.subarray(at, line).toString();
  const rest = line + 2;
  switch (head[0]) {
    case "+":
      return [head.slice(1), rest];
    case "-":
      return [new Error(head.slice(1)), rest];
    case ":":
      return [Number(head.slice(1)), rest];
    case "$": {
      const length = Number(head.slice(1));
      if (length < 0) return [null, rest];
      if (buffer.length < rest + length + 2) return null;
      return [buffer.subarray(rest, rest + length).toString(), rest + length + 2];
    }
    case "*": {
      const count = Number(head.slice(1));
      const items = [];
      let offset = rest;
      for (let i = 0; i < count; i += 1) {
        const item = parseReply(buffer, offset);
        if (item === null) return null;
        items.push(item[0]);
        offset = item[1];
      }
      return [items, offset];
    }
    default:
      throw new Error(`unexpected reply from Redis: ${head}`);
  }
}

/** Sends `commands` (arrays of arguments) to the Redis at `port` on one connection; their replies. */
function redisCommands(port, commands) {
  if (commands.length === 0) return Promise.resolve([]);
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let buffer = Buffer.alloc(0);
    const replies = [];
    socket.on("connect", () => {
      const encode = (args) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("")}`;
      socket.write(commands.map(encode).join(""));
    });
    socket.on("data", (data) => {
      buffer = Buffer.concat([buffer, data]);
      let reply;
      while (replies.length < commands.length && (reply = parseReply(buffer, 0)) !== null) {
        replies.push(reply[0]);
        buffer = buffer.subarray(reply[1]);
      }
      if (replies.length === commands.length) {
        socket.destroy();
        const error = replies.find((r) => r instanceof Error);
        if (error) reject(error);
        else resolve(replies);
      }
    });
    socket.on("error", reject);
  });
}

async function redisCommand(port, ...args) {
  const [reply] = await redisCommands(port, [args]);
  return reply;
}

/**
 * What the durability mode keeps in Redis, by kind of key: the number of
 * keys, the stream entries they hold and their bytes (MEMORY USAGE).
 */
async function durableKeys(port) {
  const keys = await redisCommand(port, "KEYS", "*tidings:*");
  const kinds = { journal: /tidings:journal:/, record: /tidings:durable:/, log: /tidings:log:/ };
  const held = {};
  for (const kind of Object.keys(kinds)) held[kind] = { keys: 0, entries: 0, bytes: 0 };
  const ours = keys.map((key) => [key, Object.keys(kinds).find((kind) => kinds[kind].test(key))]).filter(([, kind]) => kind);
  const replies = await redisCommands(
    port,
    ours.flatMap(([key, kind]) => [["MEMORY", "USAGE", key, "SAMPLES", "0"], kind === "record" ? ["HLEN", key] : ["XLEN", key]]),
  );
  ours.forEach(([, kind], i) => {
    held[kind].keys += 1;
    held[kind].bytes += replies[2 * i] ?? 0;
    held[kind].entries += kind === "record" ? 0 : replies[2 * i + 1] ?? 0;
  });
  return held;
}

/** Redis's CPU seconds, memory in use, keys and commands run so far. */
async function redisSnapshot(port) {
  const info = await redisCommand(port, "INFO", "all");
  const fields = new Map();
  for (const line of info.split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  const commands = {};
  for (const [key, value] of fields) {
    if (key.startsWith("cmdstat_")) commands[key.slice(8)] = Number(/calls=(\d+)/.exec(value)[1]);
  }
  const keyspace = /keys=(\d+)/.exec(fields.get("db0") ?? "");
  return {
    cpu: Number(fields.get("used_cpu_user")) + Number(fields.get("used_cpu_sys")),
    memory: Number(fields.get("used_memory")),
    keys: keyspace ? Number(keyspace[1]) : 0,
    commands,
  };
}

/** CPU of both processes and Redis's state at one instant. */
async function snapshot(server, redisPort) {
  const redis = await redisSnapshot(redisPort);
  const client = process.cpuUsage();
  return { at: performance.now(), server: processCpu(server.child.pid), client: (client.user + client.system) / 1e6, redis };
}

/** The figures of the window between two snapshots, for `count` messages. */
function window(before, after, count) {
  const calls = (name) => (after.redis.commands[name] ?? 0) - (before.redis.commands[name] ?? 0);
  const total = Object.keys(after.redis.commands)
    .filter((name) => name !== "info")
    .reduce((sum, name) => sum + calls(name), 0);
  const seconds = (after.at - before.at) / 1000;
  const byName = {};
  for (const name of Object.keys(after.redis.commands)) {
    if (name !== "info" && calls(name) > 0) byName[name] = calls(name);
  }
  return {
    byName,
    count,
    seconds,
    rate: count / seconds,
    serverCpuUs: ((after.server - before.server) * 1e6) / count,
    redisCpuUs: ((after.redis.cpu - before.redis.cpu) * 1e6) / count,
    redisCommands: total / count,
    xadd: calls("xadd") / count,
    clientLoad: (after.client - before.client) / seconds,
  };
}

function build(url) {
  return new signalR.HubConnectionBuilder()
    .withUrl(`${url}/hubs/test`, { transport: signalR.HttpTransportType.WebSockets, skipNegotiation: false })
    .withStatefulReconnect()
    .configureLogging(signalR.LogLevel.None)
    .build();
}

/** Starts `n` stateful connections, `parallel` at a time; `setup` runs on each before its start. */
async function connectMany(url, n, setup = () => {}, parallel = 25) {
  const connections = new Array(n);
  let nextIndex = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, n) }, async () => {
      while (nextIndex < n) {
        const i = nextIndex++;
        const connection = build(url);
        setup(connection, i);
        await connection.start();
        connections[i] = connection;
      }
    }),
  );
  return connections;
}

async function stopAll(connections) {
  await Promise.all(connections.map((c) => c.stop()));
}

/** Waits until `condition()` holds or `ms` passed; whether it holds. */
async function within(ms, condition) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/**
 * Redis memory of a phase: used_memory at the window's edges, what the
 * durable keys held at its end (clients live) and once its clients closed.
 */
async function memory(redisPort, before, after, live) {
  // The records and journals of closed connections are removed as they end.
  await sleep(500);
  const closed = await redisSnapshot(redisPort);
  return {
    memoryBefore: before.redis.memory,
    memoryAfter: after.redis.memory,
    memoryClosed: closed.memory,
    live,
    kept: await durableKeys(redisPort),
  };
}

async function echoPhase(server, redisPort, options) {
  const clients = await connectMany(server.url, options.echoClients);
  let count = 0;
  let running = true;
  const loops = clients.map(async (connection, i) => {
    let n = 0;
    while (running) {
      const reply = await connection.invoke("Echo", { n, client: i, text: TEXT });
      if (reply.n !== n) throw new Error(`echo ${n} of client ${i} answered ${JSON.stringify(reply)}`);
      n += 1;
      count += 1;
    }
  });
  await sleep(options.warmup * 1000);
  const start = count;
  const before = await snapshot(server, redisPort);
  await sleep(options.seconds * 1000);
  const end = count;
  const after = await snapshot(server, redisPort);
  const live = await durableKeys(redisPort);
  running = false;
  await Promise.all(loops);
  await stopAll(clients);
  return { ...window(before, after, end - start), ...(await memory(redisPort, before, after, live)) };
}

async function broadcastPhase(server, redisPort, options) {
  const received = new Array(options.listeners).fill(0);
  const faults = [];
  const listeners = await connectMany(server.url, options.listeners, (connection, i) => {
    connection.on("Broadcast", (message) => {
      if (message.n !== received[i]) {
        faults.push(`listener ${i} expected broadcast ${received[i]}, got ${message.n}`);
      }
      received[i] += 1;
    });
  });
  const [sender] = await connectMany(server.url, 1);
  const total = () => received.reduce((a, b) => a + b, 0);
  let sent = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      await sender.invoke("Broadcast", { n: sent, text: TEXT });
      sent += 1;
    }
  })();
  await sleep(options.warmup * 1000);
  const start = total();
  const sentStart = sent;
  const before = await snapshot(server, redisPort);
  await sleep(options.seconds * 1000);
  const end = total();
  const sentEnd = sent;
  const after = await snapshot(server, redisPort);
  const live = await durableKeys(redisPort);
  running = false;
  await loop;
  const arrived = await within(30000, () => received.every((r) => r >= sent));
  const missing = received.reduce((sum, r) => sum + Math.max(0, sent - r), 0);
  const extra = received.reduce((sum, r) => sum + Math.max(0, r - sent), 0);
  await stopAll([...listeners, sender]);
  return {
    ...(await memory(redisPort, before, after, live)),
    ...window(before, after, end - start),
    broadcasts: (sentEnd - sentStart) / ((after.at - before.at) / 1000),
    sent,
    owed: sent * options.listeners,
    missing,
    extra,
    allArrived: arrived && missing === 0 && extra === 0 && faults.length === 0,
    faults: faults.slice(0, 5),
  };
}

/** One round of one mode: its own Redis and server, echo then broadcast. */
async function runMode(durable, round, options) {
  const redis = await startRedis();
  const redisPort = Number(new URL(redis.url).port);
  const baseline = (await redisSnapshot(redisPort)).memory;
  const args = ["--listen", "127.0.0.1:0", "--test-hub", "--redis", redis.url];
  if (durable) args.push("--redis-durable-ms", String(RETENTION_MS));
  const server = await startProgram(BIN, args);
  try {
    const echo = await echoPhase(server, redisPort, options);
    const broadcast = await broadcastPhase(server, redisPort, options);
    return { mode: durable ? "on" : "off", round, baseline, echo, broadcast };
  } finally {
    await server.stop();
    await redis.stop();
  }
}

/** Every round of both modes, interleaved: off, on, off, on, … */
export async function measure(options = {}, log = () => {}) {
  const o = { ...DEFAULTS, ...options };
  const rows = [];
  for (let round = 1; round <= o.rounds; round += 1) {
    for (const durable of [false, true]) {
      const row = await runMode(durable, round, o);
      log(`round ${round}, mode ${row.mode}: echo ${row.echo.rate.toFixed(0)} msg/s, broadcast ${row.broadcast.rate.toFixed(0)} deliveries/s`);
      rows.push(row);
    }
  }
  return { options: o, rows };
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

const kib = (bytes) => `${(bytes / 1024).toFixed(0)}`;
const percent = (load) => `${(load * 100).toFixed(0)} %`;
const fixed = (value, digits) => (Number.isFinite(value) ? value.toFixed(digits) : "–");

/** The per-round tables and the median ratios, as Markdown. */
export function report({ options, rows }) {
  const lines = [];
  lines.push(
    `#### Echo: ${options.echoClients} clients, each invoking \`Echo\` back-to-back (${options.seconds} s after ${options.warmup} s warm-up)`,
    "",
    "| round | mode | messages/s | server CPU µs/msg | Redis CPU µs/msg | Redis commands/msg | XADD/msg | client CPU |",
    "|--:|---|--:|--:|--:|--:|--:|--:|",
  );
  for (const r of rows) {
    const e = r.echo;
    lines.push(
      `| ${r.round} | ${r.mode} | ${fixed(e.rate, 0)} | ${fixed(e.serverCpuUs, 1)} | ${fixed(e.redisCpuUs, 1)} | ${fixed(e.redisCommands, 2)} | ${fixed(e.xadd, 2)} | ${percent(e.clientLoad)} |`,
    );
  }
  lines.push(
    "",
    `#### Broadcast: ${options.listeners} listeners, one sender invoking \`Broadcast\` back-to-back (${options.seconds} s after ${options.warmup} s warm-up)`,
    "",
    "| round | mode | deliveries/s | broadcasts/s | all arrived | server CPU µs/delivery | Redis CPU µs/delivery | Redis commands/broadcast | XADD/broadcast | client CPU |",
    "|--:|---|--:|--:|---|--:|--:|--:|--:|--:|",
  );
  for (const r of rows) {
    const b = r.broadcast;
    lines.push(
      `| ${r.round} | ${r.mode} | ${fixed(b.rate, 0)} | ${fixed(b.broadcasts, 0)} | ${b.allArrived ? `yes (${b.owed})` : `NO: ${b.missing} missing, ${b.extra} extra of ${b.owed}`} | ${fixed(b.serverCpuUs, 2)} | ${fixed(b.redisCpuUs, 2)} | ${fixed(b.redisCommands * options.listeners, 2)} | ${fixed(b.xadd * options.listeners, 2)} | ${percent(b.clientLoad)} |`,
    );
  }
  const held = (h) => `${h.keys} / ${h.entries} / ${kib(h.bytes)}`;
  lines.push(
    "",
    "#### Redis memory (KiB; durable keys as keys / stream entries / KiB of MEMORY USAGE)",
    "",
    "| round | mode | phase | used_memory before → after window | journals at the window's end | publish log at the window's end | used_memory once the clients closed | records + journals left | publish log left |",
    "|--:|---|---|--:|--:|--:|--:|--:|--:|",
  );
  for (const r of rows) {
    for (const phase of ["echo", "broadcast"]) {
      const m = r[phase];
      const left = { keys: m.kept.record.keys + m.kept.journal.keys, entries: m.kept.journal.entries, bytes: m.kept.record.bytes + m.kept.journal.bytes };
      lines.push(
        `| ${r.round} | ${r.mode} | ${phase} | ${kib(m.memoryBefore)} → ${kib(m.memoryAfter)} | ${held(m.live.journal)} | ${held(m.live.log)} | ${kib(m.memoryClosed)} | ${held(left)} | ${held(m.kept.log)} |`,
      );
    }
  }
  // Which commands the mode on adds, in its last round.
  const lastOn = rows.filter((r) => r.mode === "on").at(-1);
  if (lastOn) {
    const spell = (byName, per) =>
      Object.entries(byName)
        .sort((a, b) => b[1] - a[1])
        .map(([name, calls]) => `${name.toUpperCase()} ${Number((calls / per).toPrecision(3))}`)
        .join(", ");
    lines.push(
      "",
      `Redis commands in the window of round ${lastOn.round}, mode on: per echo message ${spell(lastOn.echo.byName, lastOn.echo.count)}; per broadcast ${spell(lastOn.broadcast.byName, lastOn.broadcast.count / options.listeners)}.`,
    );
  }
  // Per round, on / off of the same round; the median over the rounds.
  const ratio = (pick) => {
    const ratios = [];
    for (let round = 1; round <= options.rounds; round += 1) {
      const off = rows.find((r) => r.round === round && r.mode === "off");
      const on = rows.find((r) => r.round === round && r.mode === "on");
      if (off && on && pick(off) > 0) ratios.push(pick(on) / pick(off));
    }
    return ratios.length ? median(ratios) : NaN;
  };
  const medianOf = (mode, pick) => median(rows.filter((r) => r.mode === mode).map(pick));
  const figure = (name, pick, digits, unit = "") => {
    const off = medianOf("off", pick);
    const on = medianOf("on", pick);
    // Against an off figure that rounds to nothing a ratio says nothing.
    const shown = Number(fixed(off, digits)) !== 0 ? fixed(ratio(pick), 2) : "–";
    return `| ${name} | ${fixed(off, digits)}${unit} | ${fixed(on, digits)}${unit} | ${shown} |`;
  };
  const total = (phase) => (r) => r[phase].serverCpuUs + r[phase].redisCpuUs;
  // Bytes per stream entry; NaN where there is none.
  const perEntry = (h) => (h.entries > 0 ? h.bytes / h.entries : NaN);
  lines.push(
    "",
    "#### Medians over the rounds; ratio = median of the per-round ratios on / off",
    "",
    "| figure | off | on | on / off |",
    "|---|--:|--:|--:|",
    figure("echo messages/s", (r) => r.echo.rate, 0),
    figure("echo server CPU µs/msg", (r) => r.echo.serverCpuUs, 1),
    figure("echo Redis CPU µs/msg", (r) => r.echo.redisCpuUs, 1),
    figure("echo server + Redis CPU µs/msg", total("echo"), 1),
    figure("echo Redis used_memory at the window's end (KiB)", (r) => r.echo.memoryAfter / 1024, 0),
    figure("echo journal bytes per unacknowledged message (live)", (r) => perEntry(r.echo.live.journal), 0),
    figure("broadcast deliveries/s", (r) => r.broadcast.rate, 0),
    figure("broadcast server CPU µs/delivery", (r) => r.broadcast.serverCpuUs, 2),
    figure("broadcast Redis CPU µs/delivery", (r) => r.broadcast.redisCpuUs, 2),
    figure("broadcast server + Redis CPU µs/delivery", total("broadcast"), 2),
    figure("broadcast Redis used_memory at the window's end (KiB)", (r) => r.broadcast.memoryAfter / 1024, 0),
    figure("broadcast journal bytes per unacknowledged message (live)", (r) => perEntry(r.broadcast.live.journal), 0),
    figure("publish log bytes per broadcast (kept for the retention)", (r) => perEntry(r.broadcast.kept.log), 0),
    figure("Redis used_memory once every client closed (KiB)", (r) => r.broadcast.memoryClosed / 1024, 0),
  );
  return lines.join("\n");
}

function machine() {
  const cpus = os.cpus();
  const load = os.loadavg().map((l) => l.toFixed(2)).join(" ");
  return `${cpus.length} × ${cpus[0]?.model.trim() ?? "unknown CPU"}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB; load average at start ${load}`;
}

/** The generated part of the section (between the markers). */
export function section(result, { date, machine: host, command, binary, node, redisVersion }) {
  return [
    `### Run of ${date} (\`${command}\`)`,
    "",
    `${host}. Server binary \`${binary}\`, Node ${node}, redis-server ${redisVersion}; JSON protocol over WebSockets, every client built with \`withStatefulReconnect()\`; mode on = \`--redis-durable-ms ${RETENTION_MS}\`; a fresh redis-server and server per round and mode; arguments of 64 bytes of text plus a number. Redis memory is \`used_memory\` of INFO (a fresh instance holds about 1 MiB); client CPU is that of the Node process running every client (100 % = one core).`,
    "",
    report(result),
  ].join("\n");
}

/** Replaces what lies between the markers in the file at `path` (or appends the section). */
export async function writeSection(path, text) {
  const old = await readFile(path, "utf8");
  const start = old.indexOf(BEGIN);
  const end = old.indexOf(END);
  let out;
  if (start < 0 || end < start) {
    out = `${old.trimEnd()}\n\n## Durability mode: what it costs\n\n${BEGIN}\n${text}\n${END}\n`;
  } else {
    out = `${old.slice(0, start + BEGIN.length)}\n${text}\n${old.slice(end)}`;
  }
  await writeFile(path, out);
}

function parseArgs(argv) {
  const options = {};
  let benchmarks = null;
  let json = false;
  const names = { "--rounds": "rounds", "--echo-clients": "echoClients", "--listeners": "listeners", "--seconds": "seconds", "--warmup": "warmup" };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg in names) {
      const value = Number(argv[++i]);
      if (!Number.isFinite(value) || value <= 0) throw new Error(`${arg} needs a positive number`);
      options[names[arg]] = value;
    } else if (arg === "--benchmarks") {
      benchmarks = argv[++i];
    } else if (arg === "--json") {
      json = true;
    } else {
      throw new Error(`unknown argument ${arg}`);
    }
  }
  return { options, benchmarks, json };
}

async function main() {
  const { options, benchmarks, json } = parseArgs(process.argv.slice(2));
  const host = machine();
  const started = new Date();
  const result = await measure(options, json ? () => {} : (line) => console.error(line));
  if (json) {
    console.log(JSON.stringify(result));
  } else {
    const redisVersion = /v=(\S+)/.exec(execFileSync("redis-server", ["--version"]).toString())?.[1] ?? "unknown";
    const text = section(result, {
      date: `${started.toISOString().slice(0, 16).replace("T", " ")} UTC`,
      machine: host,
      command: process.env.DURABILITY_COST_COMMAND ?? `node tests/js/durability-cost.mjs ${process.argv.slice(2).join(" ")}`.trim(),
      binary: relative(new URL("../..", import.meta.url).pathname, BIN),
      node: process.version,
      redisVersion,
    });
    console.log(text);
    if (benchmarks) await writeSection(benchmarks, text);
  }
  const broken = result.rows.filter((r) => !r.broadcast.allArrived);
  if (broken.length) {
    for (const r of broken) console.error(`round ${r.round}, mode ${r.mode}: deliveries missing or out of order: ${r.broadcast.faults.join("; ")}`);
    process.exit(1);
  }
  process.exit(0);
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error) => {
    console.error(error);
    process.exit(2);
  });
}
