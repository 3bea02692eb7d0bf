// Loaded by build.sh with `node --import` before componentize-js runs: hands
// the bindings componentize-js generates to ./bindings.mjs on their way to
// disk (see there for what it changes and why).
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
