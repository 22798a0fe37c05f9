// Builds the browser chat app into web/dist (committed; `make web` runs
// this): the TypeScript of web/src bundled with the client library by
// esbuild, and the files of web/static copied. With an argument, writes
// there instead (the test that checks web/dist is up to date).
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../web");
const out = path.resolve(process.argv[2] ?? path.join(web, "dist"));
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [path.join(web, "src/app.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  minify: true,
  legalComments: "none",
  external: ["ws"],
  outfile: path.join(out, "app.js"),
  logLevel: "warning",
});
for (const f of readdirSync(path.join(web, "static"))) copyFileSync(path.join(web, "static", f), path.join(out, f));
