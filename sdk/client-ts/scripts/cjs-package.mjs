// dist/cjs holds CommonJS under a "type": "module" package; this marker makes
// Node read its .js files as CommonJS.
import { writeFileSync } from "node:fs";
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{ "type": "commonjs" }\n');
