// Generates TypeScript declarations for the plugin API from wit/ into
// sdk/js/types/ (worlds `plugin` and `plugin-with-hooks`, and the first worlds
// `ext-lane-plugin` and `ext-lane-plugin-lifecycle`: the ones build.sh
// targets), so editors and `tsc --checkJs` know every import, record and hook.
//
//   node sdk/js/types.mjs          # (re)write sdk/js/types/
//   node sdk/js/types.mjs --check  # exit 1 when sdk/js/types/ is stale
//
// `jco types` 1.35 cannot read the WIT on its own: its bundled preview2-shim
// (0.26) starts with no filesystem preopens, so the bindgen component sees no
// files. Calling the same generator through jco-transpile with "/" preopened
// is the whole workaround.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const out = join(here, 'types');
const transpile = new URL(
  './node_modules/@bytecodealliance/jco-transpile/dist/index.js',
  `file://${here}/`,
);
const { generateGuestTypes } = await import(transpile);
const fs = await import(
  new URL('../node_modules/@bytecodealliance/preview2-shim/dist/nodejs/filesystem.js', transpile)
);
fs._setPreopens({ '/': '/' });

// Every world; their shared interface files come out identical.
const files = {};
for (const worldName of ['plugin', 'plugin-with-hooks', 'ext-lane-plugin', 'ext-lane-plugin-lifecycle']) {
  Object.assign(files, await generateGuestTypes(join(root, 'wit'), { worldName, outDir: '' }));
}
const text = (bytes) => new TextDecoder().decode(bytes);

if (process.argv.includes('--check')) {
  const stale = [];
  for (const [name, bytes] of Object.entries(files)) {
    const current = await readFile(join(out, name), 'utf8').catch(() => null);
    if (current !== text(bytes)) stale.push(name);
  }
  if (stale.length > 0) {
    console.error(`sdk/js/types is stale (${stale.join(', ')}); run: node sdk/js/types.mjs`);
    process.exit(1);
  }
  console.log(`sdk/js/types is current (${Object.keys(files).length} files)`);
} else {
  await rm(out, { recursive: true, force: true });
  for (const [name, bytes] of Object.entries(files)) {
    await mkdir(dirname(join(out, name)), { recursive: true });
    await writeFile(join(out, name), text(bytes));
  }
  console.log(`wrote ${Object.keys(files).length} files to sdk/js/types/`);
}
