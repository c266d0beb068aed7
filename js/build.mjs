// Bundles the panel's front end into ../nbopt/static/ (shipped in the wheel).
// Usage: node build.mjs [--watch]
import * as esbuild from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

const outdir = new URL("../nbopt/static/", import.meta.url).pathname;
const options = {
  entryPoints: ["src/widget.ts"],
  bundle: true,
  format: "esm",
  minify: true,
  target: ["es2020"],
  outfile: `${outdir}widget.js`,
  legalComments: "eof",
  logLevel: "info",
};

await mkdir(outdir, { recursive: true });
await copyFile("src/widget.css", `${outdir}widget.css`);
if (process.argv.includes("--watch")) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
