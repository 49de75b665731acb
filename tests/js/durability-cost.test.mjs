// The durability-cost benchmark (durability-cost.mjs) at a tiny size: in
// both modes every broadcast reaches every listener once, in order, and
// only the mode on writes to Redis streams (one XADD per echo reply: the
// reply is journaled before it is written) and keeps a publish log. `bash scripts/bench.sh
// --durability` runs the full size and records it in BENCHMARKS.md.

import { test } from "node:test";
import assert from "node:assert/strict";
import { measure, report } from "./durability-cost.mjs";

test("durability cost: both modes deliver everything, only the mode on journals", async (t) => {
  const result = await measure({ rounds: 1, echoClients: 4, listeners: 10, seconds: 1, warmup: 0.5 });
  for (const line of report(result).split("\n")) t.diagnostic(line);
  const off = result.rows.find((r) => r.mode === "off");
  const on = result.rows.find((r) => r.mode === "on");
  for (const row of [off, on]) {
    assert.ok(row.echo.count > 0, `mode ${row.mode}: no echo measured`);
    assert.ok(row.broadcast.sent > 0, `mode ${row.mode}: no broadcast sent`);
    assert.ok(row.broadcast.allArrived, `mode ${row.mode}: ${row.broadcast.missing} missing, ${row.broadcast.extra} extra; ${row.broadcast.faults.join("; ")}`);
  }
  assert.equal(off.echo.xadd, 0);
  assert.equal(off.broadcast.xadd, 0);
  // Every echo reply is a numbered message of a stateful connection (the
  // window's edges, read a moment apart, blur the count a little).
  assert.ok(on.echo.xadd > 0.9 && on.echo.xadd < 1.1, `mode on: ${on.echo.xadd} XADD per echo`);
  assert.ok(on.broadcast.xadd > 0);
  // The publish log keeps every broadcast for the retention, after the
  // clients are gone; without the mode there is none.
  assert.ok(on.broadcast.kept.log.entries >= on.broadcast.sent, `${on.broadcast.kept.log.entries} logged of ${on.broadcast.sent}`);
  assert.equal(off.broadcast.kept.log.keys, 0);
});
