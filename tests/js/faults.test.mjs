// The fault scenarios of faults.mjs at their short size: Redis outages
// within and beyond the backplane buffer, a rolling restart and a kill -9
// behind HAProxy, TCP cuts under stateful reconnect, clients that stop
// reading. Each scenario must meet its stated expectation (EXPECTATIONS in
// faults.mjs); `bash scripts/faults.sh` runs the full size.

import { test } from "node:test";
import assert from "node:assert/strict";
import { SCENARIOS, SIZES, failures, table } from "./faults.mjs";

for (const scenario of SCENARIOS) {
  test(`${scenario.name}: ${scenario.title}`, async (t) => {
    const rows = await scenario.run(SIZES.short);
    for (const line of [...table(rows).split("\n"), ...rows.flatMap((r) => r.notes)]) t.diagnostic(line);
    // Every row accounts for deliveries, and at least one was owed.
    assert.ok(rows.some((r) => r.sent > 0), table(rows));
    assert.deepEqual(failures(rows), [], table(rows));
  });
}
