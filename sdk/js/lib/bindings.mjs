// What a call into a JavaScript plugin costs is mostly the JS bindings that
// componentize-js generates around each export, run by SpiderMonkey's
// interpreter. Two of their habits cost much and do nothing for a wsPrism
// plugin, so the SDK rewrites the generated text before it is snapshotted:
//
// 1. Every export wrapper `await`s the plugin's function, even when it
//    returned a plain value; an `await` suspends the wrapper and resumes it
//    from the event loop (a promise, a reaction job, an async stack capture).
//    Rewritten, the wrapper awaits only what is a promise: a synchronous
//    handler returns straight through, an `async` one is awaited exactly as
//    before (the host still runs the event loop to its end).
// 2. Every wrapper calls `_debugLog(...)` several times with freshly built
//    objects; `_debugLog` returns at once unless `JCO_DEBUG` is set in the
//    guest's environment, which the gateway never sets. The calls are removed.
// 3. Every string passed to the host (each argument of `reply`, `publish`,
//    `kv.set`, ...) is measured by `_utf8AllocateAndEncode` in an interpreted
//    loop over its characters before it is encoded. The engine's native
//    `TextEncoder.encode` and one copy into the guest's memory give the same
//    bytes in an allocation of the same size.
//
// Measured on `sdk/examples/echo-js` in a bare wasmtime host
// (`examples/bare_host.rs`, with epoch interruption as in the gateway):
// 28.0 µs -> 22.3 µs (1 and 2) -> 17.0 µs (3) per call. The rewrite is
// checked against the generated text: if componentize-js (pinned in
// package.json) ever generates something else, the build fails here rather
// than shipping a half-rewritten wrapper.
export * from 'node:fs/promises';
import { writeFile as fsWriteFile } from 'node:fs/promises';

/**
 * The rewrite described above.
 * @param {string} js generated bindings
 * @returns {string}
 */
export function optimizeBindings(js) {
  const exports = (js.match(/\nasync function export_[\w$]+\(/g) ?? []).length;
  let awaits = 0;
  // `const hostRetN = await f(args);` (functions with results) and
  // `ret = await f(args);` (functions without); args may span lines and
  // never contain `);` + newline.
  let out = js.replace(
    /((?:const hostRet\d+|ret) = )await ([\w$]+)\(([^]*?)\);\n/g,
    (_m, lhs, callee, args) => {
      awaits += 1;
      const r = `$wsprismRet${awaits}`;
      return (
        `const ${r} = ${callee}(${args});\n` +
        `${lhs}(${r} !== null && typeof ${r} === 'object' && typeof ${r}.then === 'function') ? await ${r} : ${r};\n`
      );
    },
  );
  if (exports === 0 || awaits !== exports) {
    throw new Error(
      `wsprism: componentize-js generated ${exports} export wrappers with ${awaits} known awaits; ` +
        'this SDK knows the bindings of the componentize-js version pinned in sdk/js/package.json',
    );
  }
  const before = out.length;
  out = out.replace(/\n[ \t]*_debugLog\((?:[^()]|\([^()]*\))*\);/g, '');
  if (out.length === before || /\b_debugLog\(\s*['"]/.test(out)) {
    throw new Error('wsprism: the generated bindings log differently than this SDK expects');
  }
  const encoder = /\nfunction _utf8AllocateAndEncode\(s, realloc, memory\) \{\n[^]*?\n\}\n/;
  const found = out.match(encoder);
  if (!found || !found[0].includes('encodeInto') || out.split('_utf8AllocateAndEncode(').length < 2) {
    throw new Error('wsprism: the generated string encoder is not the one this SDK expects');
  }
  out = out.replace(encoder, `
function _utf8AllocateAndEncode(s, realloc, memory) {
  if (typeof s !== 'string') {
    throw new TypeError('expected a string, received [' + typeof s + ']');
  }
  if (s.length === 0) { return { ptr: 1, len: 0 }; }
  const bytes = TEXT_ENCODER_UTF8.encode(s);
  const ptr = realloc(0, 0, 1, bytes.length);
  new Uint8Array(memory.buffer, ptr, bytes.length).set(bytes);
  return { ptr, len: bytes.length };
}
`);
  // The original also counted code points; nothing else may read them.
  if (out.includes('codepoints')) {
    throw new Error('wsprism: the generated bindings read code points this SDK does not provide');
  }
  return out;
}

export async function writeFile(path, data, ...rest) {
  if (String(path).endsWith('initializer.js')) {
    return fsWriteFile(path, optimizeBindings(String(data)), ...rest);
  }
  return fsWriteFile(path, data, ...rest);
}
