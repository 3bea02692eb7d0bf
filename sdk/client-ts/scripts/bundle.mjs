// Browser bundles: one ES module file and one IIFE file that defines the global
// `WsPrism`, both from src/index.ts, minified, with source maps.
import { build } from "esbuild";

const common = {
  entryPoints: [new URL("../src/index.ts", import.meta.url).pathname],
  bundle: true,
  minify: true,
  sourcemap: true,
  platform: "browser",
  target: ["es2022"],
  logLevel: "warning",
};
await build({ ...common, format: "esm", outfile: new URL("../dist/browser/wsprism.esm.js", import.meta.url).pathname });
await build({ ...common, format: "iife", globalName: "WsPrism", outfile: new URL("../dist/browser/wsprism.iife.js", import.meta.url).pathname });
