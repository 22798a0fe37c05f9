// Builds web/static/app.js (committed; `make web` runs this): the
// TypeScript of web/src bundled with the client library by esbuild. With
// an argument, writes into that directory instead (the test that checks
// the committed file is up to date).
import { build } from "esbuild";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../web");
const out = path.resolve(process.argv[2] ?? path.join(web, "static"));
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
