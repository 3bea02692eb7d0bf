// Module resolution hook (node:module `register`): componentize-js's
// `componentize.js` gets ./bindings.mjs for `node:fs/promises`, which is
// node's own module except that `writeFile` passes the generated bindings
// (`initializer.js`) through `optimizeBindings`. Nothing else is redirected.
const componentize = '/@bytecodealliance/componentize-js/src/componentize.js';

export async function resolve(specifier, context, next) {
  if (specifier === 'node:fs/promises' && context.parentURL?.endsWith(componentize)) {
    return { url: new URL('./bindings.mjs', import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
