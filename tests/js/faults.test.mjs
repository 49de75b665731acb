// The fault scenarios of faults.mjs at their short size: Redis outages
// within and beyond the backplane buffer, a rolling restart and a kill -9
// behind HAProxy, TCP cuts under stateful reconnect, clients that stop
// reading. Each scenario must meet its stated expectation (EXPECTATIONS in
// faults.mjs); `bash scripts/faults.sh` runs the full size.
//
// Each scenario runs in a process of its own (`node faults.mjs --short
// --only <name> --json`), which counts the official client's known
// unhandled rejection (see faults.mjs) instead of failing on it as the test
// runner would.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { SCENARIOS, failures, table } from "./faults.mjs";

const here = new URL(".", import.meta.url).pathname;

function runShort(name) {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["faults.mjs", "--short", "--only", name, "--json"],
      { cwd: here, maxBuffer: 16 * 2 ** 20 },
      (error, stdout, stderr) => {
        // Exit status 1 is a broken expectation, which the rows say.
        if (error && error.code !== 1) reject(new Error(`${error.message}\n${stderr}`));
        else resolve(JSON.parse(stdout));
      },
    );
  });
}

for (const scenario of SCENARIOS) {
  test(`${scenario.name}: ${scenario.title}`, async (t) => {
    const rows = await runShort(scenario.name);
    for (const line of [...table(rows).split("\n"), ...rows.flatMap((r) => r.notes)]) t.diagnostic(line);
    // At least one delivery was owed, and accounted for.
    assert.ok(rows.some((r) => r.sent > 0), table(rows));
    assert.deepEqual(failures(rows), [], table(rows));
  });
}
