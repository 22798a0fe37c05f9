// web/dist is committed (go build embeds it without Node.js); this checks
// that it is what `make web` builds from web/src, web/static and the
// client library now.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, "../../../web/dist");

test("web/dist matches a fresh build (run `make web` and commit it if not)", () => {
  const out = mkdtempSync(path.join(tmpdir(), "imgn-webdist-"));
  try {
    execFileSync(process.execPath, [path.join(here, "../scripts/build-web.mjs"), out], { stdio: "inherit" });
    const want = readdirSync(out).sort();
    assert.deepEqual(readdirSync(dist).sort(), want);
    for (const f of want) {
      assert.ok(readFileSync(path.join(dist, f)).equals(readFileSync(path.join(out, f))), `web/dist/${f} is stale`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
