// `js`: the generic JavaScript runner. The task's stdin is a JavaScript program, evaluated as a
// classic script in the global scope.
//
// `console.log` writes to stdout and `console.error` to stderr; `process.argv` is [module name,
// task args...], `process.env` the task's environment and `process.exit(n)` exits n. As in Node,
// the task ends when the program and every timer it set have run; if the program's last
// expression is a promise, it is awaited. A thrown error (or a rejected last promise) prints its
// message and stack on stderr and exits 1. There is no network: `fetch` throws. The engine is
// initialised (and this file evaluated) at build time: a task starts with a warm interpreter.

import { getArguments, getEnvironment } from 'wasi:cli/environment@0.2.12';
import { exitWithCode } from 'wasi:cli/exit@0.2.12';
import { getStdin } from 'wasi:cli/stdin@0.2.12';

/** Reads the whole of stdin (the program). */
function readStdin() {
  const stdin = getStdin();
  const chunks = [];
  let length = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stdin.blockingRead(65536n);
    } catch (error) {
      // `closed` is the end of the program text; anything else is a host error.
      if (error?.payload?.tag === 'closed' || error?.tag === 'closed') break;
      throw error;
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return new TextDecoder().decode(bytes);
}

/** What an uncaught value prints on stderr: an error's message and stack, or the value itself. */
function describe(thrown) {
  if (thrown instanceof Error) {
    return `Uncaught ${thrown}\n${thrown.stack || ''}`.trimEnd();
  }
  return `Uncaught ${String(thrown)}`;
}

/**
 * The program's timers, so the task waits for them as Node does before exiting: `idle()`
 * resolves once none is pending.
 */
const timers = (() => {
  const pending = new Set();
  let wake = null;
  const { setTimeout, setInterval, clearTimeout, clearInterval } = globalThis;
  const settle = (id) => {
    pending.delete(id);
    if (pending.size === 0 && wake) {
      wake();
      wake = null;
    }
  };
  globalThis.setTimeout = (callback, ms, ...args) => {
    const id = setTimeout(() => {
      try {
        callback(...args);
      } finally {
        settle(id);
      }
    }, ms);
    pending.add(id);
    return id;
  };
  globalThis.setInterval = (callback, ms, ...args) => {
    const id = setInterval(callback, ms, ...args);
    pending.add(id);
    return id;
  };
  globalThis.clearTimeout = (id) => {
    clearTimeout(id);
    settle(id);
  };
  globalThis.clearInterval = (id) => {
    clearInterval(id);
    settle(id);
  };
  return {
    async idle() {
      while (pending.size > 0) {
        await new Promise((resolve) => {
          wake = resolve;
        });
      }
    },
  };
})();

globalThis.fetch = () => {
  throw new TypeError('fetch: a warren task has no network');
};

export const run = {
  async run() {
    globalThis.process = {
      argv: getArguments(),
      env: Object.fromEntries(getEnvironment()),
      exit(code = 0) {
        exitWithCode(Number(code) & 0xff);
      },
    };
    let code = 0;
    try {
      await (0, eval)(readStdin());
      await timers.idle();
    } catch (thrown) {
      console.error(describe(thrown));
      code = 1;
    }
    exitWithCode(code);
  },
};
