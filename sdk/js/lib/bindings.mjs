// What a call into a JavaScript plugin costs is mostly the JS bindings that
// componentize-js generates around each export, run by SpiderMonkey's
// interpreter. Their habits below cost much and do nothing for a wsPrism
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
//    loop over its characters before it is encoded. It is now encoded by the
//    engine's native `TextEncoder.encodeInto` straight into guest memory.
// 4. Every export wrapper is an `async function`, so even a plain return
//    allocates a promise and an async function object per call (the engine
//    requires a promise back). Each wrapper of the usual shape is split in
//    two: a plain function that lifts the arguments, calls the plugin and
//    lowers the result, returning one shared resolved promise; and, only
//    when the plugin returned a promise, an `async` continuation that awaits
//    it and then lowers the result exactly as the original did.
// 5. The bindings run as a classic script, so each of the dozens of
//    top-level names a call touches (`$memory`, `dataView`, `$dealloc`, the
//    import functions, ...) is looked up by name in the global scope by the
//    interpreter. The whole text is wrapped in one function, which makes them
//    closure slots the interpreter reads directly. What the engine looks up
//    on the global object (`bindExports` and the `export_*` wrappers) is
//    still published there.
// 6. The interpreter builds each object literal property by property, so
//    small objects made and dropped per call cost much: the encoder returned
//    `{ ptr, len }` per string, and every successful call without a value
//    made a fresh `{ tag: 'ok', val: undefined }` (once in the import
//    wrapper of `reply`, `publish`, `kv.set`, ..., once in the export
//    wrapper). The encoder now returns the pointer and leaves the length in
//    a variable read on the next line; the empty success is one frozen
//    object, which never reaches plugin code.
// 7. Each interpreted call (a frame pushed, its environment unwound on
//    return) costs more than the few lines it runs: `dataView($memory)`
//    around every read and write of guest memory, and the encoder for every
//    string. The `dataView` body now stands at each use, and each string
//    argument is encoded in place when it is a non-empty string; the encoder
//    is still called for the rest (empty, not a string: its error) and to
//    grow the allocation when the string is not ASCII.
//
// Measured on `sdk/examples/echo-js` in a bare wasmtime host
// (`examples/bare_host.rs`, with epoch interruption as in the gateway):
// 28.0 µs -> 22.3 µs (1 and 2) -> 17.0 µs (3 as first made, with `encode`);
// then, on another day's host, 18.7-20.2 µs -> 13.5-14.2 µs (3 with
// `encodeInto`, 4 and 5); then 16.6 µs -> 14.8 µs (6 and 7) per call; see
// BENCHMARKS.md. The rewrite is
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
      return `const ${r} = ${callee}(${args});\n${lhs}${awaitIfPromise(r)}`;
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
  out = out.replace(encoder, () => `
function _utf8AllocateAndEncode(s, realloc, memory) {
  if (typeof s !== 'string') {
    throw new TypeError('expected a string, received [' + typeof s + ']');
  }
  if (s.length === 0) { ${ENCODED_LEN} = 0; return 1; }
  let ptr, len;
${encodeNonEmpty('  ', 's', 'ptr', 'len', 'realloc, memory')}  ${ENCODED_LEN} = len;
  return ptr;
}

// The string was not all ASCII: grow its allocation to the worst case and
// encode what is left after the \`first\` part.
function ${ENCODE_REST}(s, ptr, first, realloc, memory) {
  const units = s.length;
  ptr = realloc(ptr, units, 1, units * 3);
  const rest = TEXT_ENCODER_UTF8.encodeInto(
    s.slice(first.read),
    new Uint8Array(memory.buffer, ptr + first.written, units * 3 - first.written),
  );
  ${ENCODED_LEN} = first.written + rest.written;
  return ptr;
}
`);
  out = encodedLength(out);
  // The original also counted code points; nothing else may read them.
  if (out.includes('codepoints')) {
    throw new Error('wsprism: the generated bindings read code points this SDK does not provide');
  }
  return enclose(syncExports(sharedOk(inlineDataView(out))));
}

/** @param {string} r a variable: the test step 1 and step 4 share. */
const isPromise = (r) => `(${r} !== null && typeof ${r} === 'object' && typeof ${r}.then === 'function')`;
/** @param {string} r a variable: step 1's `await` of it only if it is a promise. */
const awaitIfPromise = (r) => `${isPromise(r)} ? await ${r} : ${r};\n`;

const RESOLVED = '$wsprismResolved';
const ASYNC = '$wsprismAsync';
const ENCODED_LEN = '$wsprismEncodedLen';
const ENCODE_REST = '$wsprismEncodeRest';
const OK = '$wsprismOk';

/**
 * Statements that encode the non-empty string `s` into a new allocation,
 * leaving its pointer and byte length in the variables `ptr` and `len`.
 * UTF-8 takes at least one byte per UTF-16 unit, exactly one when all are
 * ASCII: that size is tried first, grown to the worst case (3 per unit) by
 * the encoder's second half only when the string is not ASCII.
 * @param {string} i indentation
 * @param {string} s the string variable
 * @param {string} ptr variable for the pointer
 * @param {string} len variable for the length
 * @param {string} rm the realloc function and the memory, e.g. `$realloc, $memory`
 * @returns {string}
 */
function encodeNonEmpty(i, s, ptr, len, rm) {
  const [realloc, memory] = rm.split(', ');
  return (
    `${i}${len} = ${s}.length;\n` +
    `${i}${ptr} = ${realloc}(0, 0, 1, ${len});\n` +
    `${i}const $first = TEXT_ENCODER_UTF8.encodeInto(${s}, new Uint8Array(${memory}.buffer, ${ptr}, ${len}));\n` +
    `${i}if ($first.read !== ${len}) {\n` +
    `${i}  ${ptr} = ${ENCODE_REST}(${s}, ${ptr}, $first, ${rm});\n` +
    `${i}  ${len} = ${ENCODED_LEN};\n` +
    `${i}}\n`
  );
}

/**
 * Steps 6 and 7 for strings: each caller of the encoder read the pointer
 * and the length from an object built per string; the pointer is now its
 * return value and the length is read from one variable set just before it
 * returns, with nothing in between. The usual case is encoded in place.
 * @param {string} js bindings with the new encoder
 * @returns {string}
 */
function encodedLength(js) {
  const out = js.replace(
    /var encodeRes = _utf8AllocateAndEncode\(([\w$]+), (\$realloc, \$memory)\);\n([ \t]*)var (ptr\d+)= encodeRes\.ptr;\n[ \t]*var (len\d+) = encodeRes\.len;\n/g,
    (_m, s, rm, i, ptr, len) =>
      // The usual case, a non-empty string, is encoded in place: one
      // interpreted call fewer per string than through the encoder.
      `var ${ptr}, ${len};\n` +
      `${i}if (typeof ${s} === 'string' && ${s}.length !== 0) {\n` +
      encodeNonEmpty(`${i}  `, s, ptr, len, rm) +
      `${i}} else {\n` +
      `${i}  ${ptr} = _utf8AllocateAndEncode(${s}, ${rm});\n` +
      `${i}  ${len} = ${ENCODED_LEN};\n` +
      `${i}}\n`,
  );
  if (out.includes('encodeRes')) {
    throw new Error('wsprism: the generated bindings read an encoded string differently than this SDK expects');
  }
  return `let ${ENCODED_LEN} = 0;\n${out}`;
}

/**
 * Step 7 for memory: every read or write of the guest's memory went through
 * `dataView($memory)`, an interpreted call that returns the cached view
 * (made anew when the memory grew). Its one-line body now stands at each
 * use instead.
 * @param {string} js
 * @returns {string}
 */
function inlineDataView(js) {
  const helper = 'const dataView = mem => dv.buffer === mem.buffer ? dv : dv = new DataView(mem.buffer);';
  if (!js.includes(helper) || !/\nlet dv = /.test(js)) {
    throw new Error('wsprism: the generated bindings read memory differently than this SDK expects');
  }
  const out = js.replaceAll(
    'dataView($memory)',
    '(dv.buffer === $memory.buffer ? dv : (dv = new DataView($memory.buffer)))',
  );
  if (/\bdataView\((?!mem\b)/.test(out.replace(helper, ''))) {
    throw new Error('wsprism: the generated bindings read memory differently than this SDK expects');
  }
  return out;
}

/**
 * Step 6 for results: a successful call without a value built a fresh
 * `{ tag: 'ok', val: undefined }` per call: in each import wrapper that
 * returns `result<_, E>` (`reply`, `publish`, `kv.set`, ...), read once
 * and dropped, and in each export wrapper whose plugin function returned
 * nothing. Both now use one frozen object; it never reaches plugin code.
 * @param {string} js
 * @returns {string}
 */
function sharedOk(js) {
  let imports = 0;
  // Function by function: only where the variant is that function's return
  // value, read by the wrapper alone (`const retCopy = variantN;`).
  let out = js
    .split(/\n(?=(?:async )?function )/)
    .map((fn) =>
      fn.replace(/(variant\d+)= \{\n[ \t]*tag: 'ok',\n[ \t]*val: undefined\n[ \t]*\};/g, (whole, v) => {
        if (!fn.includes(`const retCopy = ${v};`)) {
          return whole;
        }
        imports += 1;
        return `${v}= ${OK};`;
      }),
    )
    .join('\n');
  let exports = 0;
  out = out.replace(/: \{ tag: 'ok', val: (hostRet\d+)\};/g, (_m, v) => {
    exports += 1;
    return `: (${v} === undefined ? ${OK} : { tag: 'ok', val: ${v} });`;
  });
  if (imports === 0 || exports === 0) {
    throw new Error('wsprism: the generated bindings build results differently than this SDK expects');
  }
  return `const ${OK} = Object.freeze({ tag: 'ok', val: undefined });\n${out}`;
}

/**
 * Step 4: each `async function export_*` of the shape componentize-js
 * generates becomes a plain function plus an async continuation used only
 * when the plugin returns a promise. Wrappers of any other shape stay as
 * they are (correct, just slower).
 * @param {string} js bindings after steps 1-3
 * @returns {string}
 */
function syncExports(js) {
  let converted = 0;
  const out = js.replace(
    /\nasync function (export_[\w$]+)\(([^)]*)\) \{\n([^]*?)\n\}\n/g,
    (whole, name, params, body) => {
      const pair = splitExport(name, params, body);
      if (pair === null) {
        return whole;
      }
      converted += 1;
      return pair;
    },
  );
  // `handle` (world `plugin`) has no borrow to drop after the call, so its
  // wrapper must convert; the first world's `on-message` (a `finally` drops
  // the borrowed session) keeps its async wrapper.
  if (converted === 0 || /\nasync function export_handle\(/.test(out)) {
    throw new Error(
      `wsprism: the export wrappers do not have the shape this SDK makes synchronous (${converted} converted)`,
    );
  }
  return out;
}

/**
 * @param {string} name export wrapper, e.g. `export_handle`
 * @param {string} params its parameters, e.g. `arg0, arg1`
 * @param {string} body its text between the braces
 * @returns {string | null} the plain function and its continuation, or null
 *   when the wrapper is not of the known shape
 */
function splitExport(name, params, body) {
  // The arguments are lifted first (strings decoded and freed), then
  // `let ret;`, then the call and the lowering of its result.
  const split = body.match(/^  let ret;\n/m);
  if (split === null) {
    return null;
  }
  const lift = body.slice(0, split.index);
  const tail = body.slice(split.index + split[0].length);
  // Step 1 made the call `const $wsprismRetN = f(...);` followed at once by
  // `<lhs>` + awaitIfPromise(`$wsprismRetN`).
  const values = [...tail.matchAll(/^[ \t]*const (\$wsprismRet\d+) = /gm)];
  if (values.length !== 1) {
    return null;
  }
  const value = values[0][1];
  const callStart = values[0].index + values[0][0].indexOf('const');
  const wait = awaitIfPromise(value);
  const waitEnd = tail.indexOf(wait);
  const waitAt = tail.lastIndexOf('\n', waitEnd) + 1;
  if (waitEnd < callStart || !tail.slice(0, waitAt).endsWith(';\n')) {
    return null;
  }
  const lhs = tail.slice(waitAt, waitEnd);
  const call = tail.slice(callStart, waitAt);
  // A `finally` would run before an awaited promise settles once the plain
  // function returns early; the only `return` must be the last statement.
  if (/\bfinally\b/.test(tail) || (body.match(/\breturn\b/g) ?? []).length !== 1 || !/\n  return;$/.test(body)) {
    return null;
  }
  const lowerAsync = tail.replace(call, () => `const ${value} = $wsprismPending;\n`);
  // The continuation has the parameters but none of the lifted locals.
  for (const [, local] of lift.matchAll(/\b(?:var|let|const) ([\w$]+)/g)) {
    const escaped = local.replace(/\$/g, '\\$');
    if (new RegExp(`(?<![\\w$])${escaped}(?![\\w$])`).test(lowerAsync)) {
      return null;
    }
  }
  const rest = params.trim() === '' ? '' : `, ${params}`;
  const lowerSync = tail
    .replace(lhs + wait, () => `if (${isPromise(value)}) return ${name}${ASYNC}(${value}${rest});\n${lhs}${value};\n`)
    .replace(/\n  return;$/, () => `\n  return ${RESOLVED};`);
  // An async function turns a throw into a rejected promise; so does this.
  return (
    `\nfunction ${name}(${params}) {\ntry {\n${lift}  let ret;\n${lowerSync}\n} catch (e) {\n  return Promise.reject(e);\n}\n}\n` +
    `\nasync function ${name}${ASYNC}($wsprismPending${rest}) {\n  let ret;\n${lowerAsync}\n}\n`
  );
}

/**
 * Step 5: the whole text inside one function. What the engine looks up on
 * the global object afterwards (`bindExports`, then the `export_*`
 * wrappers) is published there, as the script's function declarations were.
 * @param {string} js
 * @returns {string}
 */
function enclose(js) {
  const names = [...js.matchAll(/^[ \t]*(?:async )?function (bindExports|export_[\w$]+)\(/gm)]
    .map((m) => m[1])
    .filter((n) => !n.endsWith(ASYNC));
  if (!names.includes('bindExports') || names.length < 2) {
    throw new Error('wsprism: the generated bindings have no bindExports function or no exports');
  }
  const publish = names.map((n) => `globalThis.${n} = ${n};`).join('\n');
  return `(function () {\nconst ${RESOLVED} = Promise.resolve();\n${js}\n${publish}\n})();\n`;
}

export async function writeFile(path, data, ...rest) {
  if (String(path).endsWith('initializer.js')) {
    return fsWriteFile(path, optimizeBindings(String(data)), ...rest);
  }
  return fsWriteFile(path, data, ...rest);
}
