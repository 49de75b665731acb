// The TypeScript modules `tidings typescript` generates for the server's
// hubs: they compile under `tsc --strict` with a usage file, a usage file
// with misspelled methods does not compile (and the errors name them), the
// compiled usage works against the running server, and generated modules
// committed elsewhere in the repository match what the generator writes now.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { BIN, startServer } from "../server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const TSC = join(here, "node_modules", "typescript", "bin", "tsc");
const HUBS = ["chat", "dashboard", "test"];

function run(command, args) {
  const result = spawnSync(command, args, { cwd: here, encoding: "utf8" });
  if (result.error) {
    throw result.error;
  }
  return result;
}

function tsc(project) {
  return run(process.execPath, [TSC, "-p", project, "--strict", "--pretty", "false"]);
}


before(() => {
  rmSync(join(here, "generated"), { recursive: true, force: true });
  rmSync(join(here, "build"), { recursive: true, force: true });
  mkdirSync(join(here, "generated"));
  for (const hub of HUBS) {
    const result = run(BIN, ["typescript", "--hub", hub, "--out", join("generated", `${hub}.ts`)]);
    assert.equal(result.status, 0, result.stderr);
  }
});

test("the generated modules declare the hubs' methods and types", () => {
  const chat = readFileSync(join(here, "generated", "chat.ts"), "utf8");
  assert.match(chat, /^\/\/ Generated from the Rust hub `ChatHub` by tidings\. Do not edit\./);
  assert.match(chat, /import type \{ HubConnection \} from "@microsoft\/signalr";/);
  assert.match(chat, /export type RoomUsers = \{/);
  assert.match(chat, /getRoomUsers\(room: string\): Promise<RoomUsers>;/);
  assert.match(chat, /receiveMessage\(user: string, message: string\): void \| Promise<void>;/);
  assert.match(chat, /receiveMessage: "ReceiveMessage",/);
  const test = readFileSync(join(here, "generated", "test.ts"), "utf8");
  assert.match(test, /counter\(count: number, delayMs: number\): IStreamResult<number>;/);
  assert.match(test, /sum\(numbers: Subject<number>\): Promise<number>;/);
});

test("a usage file compiles with the generated modules under tsc --strict", () => {
  const result = tsc("tsconfig.json");
  assert.equal(result.status, 0, `tsc failed:\n${result.stdout}${result.stderr}`);
});

test("a usage file with misspelled methods does not compile", () => {
  const result = tsc("tsconfig.misspelled.json");
  assert.notEqual(result.status, 0, "the misspelled usage compiled");
  const errors = result.stdout;
  assert.match(errors, /error TS2551: Property 'sendMesage' does not exist on type 'ChatInvoke'\. Did you mean 'sendMessage'\?/);
  assert.match(errors, /error TS2345: Argument of type '"recieveMessage"' is not assignable to parameter of type 'keyof ChatClient'\./);
  assert.match(errors, /error TS2345: Argument of type 'number' is not assignable to parameter of type 'string'\./);
  assert.match(errors, /Type 'RoomUsers' is not assignable to type 'string'\./);
  // Nothing else failed: exactly the four mistakes.
  assert.equal(errors.match(/error TS/g)?.length, 4, errors);
});

test("the compiled usage talks to the server through the typed wrappers", async () => {
  const compiled = tsc("tsconfig.json");
  assert.equal(compiled.status, 0, compiled.stdout);
  const usage = await import(join(here, "build", "usage", "good.js"));
  // The streams usage talks to the test hub, served only when asked for.
  const server = await startServer(["--metrics-period-ms", "100", "--test-hub"]);
  try {
    const chat = await usage.chatExchange(server.url);
    assert.deepEqual(chat.message, ["ann", "hello"]);
    assert.equal(chat.roomMessage.room, "lobby");
    assert.equal(chat.roomMessage.content, "in the room");
    assert.equal(chat.roomMessage.sender, "Anonymous");
    assert.equal(chat.joined, "Anonymous");
    assert.equal(chat.users.room, "lobby");
    assert.equal(chat.users.connections, 2);
    assert.match(chat.connectionId, /\S+/);
    assert.equal(chat.handlerRemoved, true);

    const sample = await usage.dashboardSample(server.url);
    assert.equal(typeof sample, "object");
    assert.ok(Object.keys(sample).length > 0, JSON.stringify(sample));

    const streams = await usage.streams(server.url);
    assert.deepEqual(streams.counted, [0, 1, 2]);
    assert.equal(streams.sum, 3.5);
    assert.equal(streams.joined, "a+b");
    assert.equal(streams.sum2, 42);
  } finally {
    server.stop();
  }
});

/** `.ts` files of the repository, outside dependencies and build output. */
function* sources(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (["node_modules", "target", ".git"].includes(entry.name)) {
      continue;
    }
    if (dir === here && ["generated", "build"].includes(entry.name)) {
      continue;
    }
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      yield* sources(path);
    } else if (entry.name.endsWith(".ts")) {
      yield path;
    }
  }
}

test("generated modules committed in the repository are up to date", (t) => {
  const committed = [];
  for (const path of sources(root)) {
    const head = readFileSync(path, "utf8").split("\n", 2);
    const hub = head[1]?.match(/tidings typescript --hub (\w+)/);
    if (head[0].startsWith("// Generated from the Rust hub") && hub) {
      committed.push([path, hub[1]]);
    }
  }
  if (committed.length === 0) {
    t.skip("no generated module is committed");
    return;
  }
  for (const [path, hub] of committed) {
    const result = run(BIN, ["typescript", "--hub", hub, "--out", path, "--check"]);
    assert.equal(result.status, 0, `${relative(root, path)}: ${result.stderr}`);
  }
});

after(() => {
  rmSync(join(here, "build"), { recursive: true, force: true });
});
