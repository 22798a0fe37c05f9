// web/static/app.js is committed (go build embeds it without Node.js);
// this checks that it is what `make web` builds from web/src and the
// client library now.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const here = path.dirname(fileURLToPath(import.meta.url));
const committed = path.resolve(here, "../../../web/static/app.js");

test("web/static/app.js matches a fresh build (run `make web` and commit it if not)", () => {
  const out = mkdtempSync(path.join(tmpdir(), "imgn-webdist-"));
  try {
    execFileSync(process.execPath, [path.join(here, "../scripts/build-web.mjs"), out], { stdio: "inherit" });
    assert.ok(readFileSync(committed).equals(readFileSync(path.join(out, "app.js"))), "web/static/app.js is stale");
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
