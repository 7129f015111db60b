// The CLI's Reporter: on a terminal, progress is one line rewritten in place and kept lines scroll above it; in a
// log (not a TTY), only the kept lines are written, one per line.

import type { Reporter } from "../util/reporter.js";

export function terminalReporter(stream: NodeJS.WriteStream = process.stderr): Reporter {
  if (stream.isTTY !== true) {
    return {
      status() {},
      line(text) {
        stream.write(`${text}\n`);
      },
    };
  }
  let shown = false;
  const clear = () => {
    if (shown) stream.write("\r\x1b[2K");
    shown = false;
  };
  return {
    status(text) {
      clear();
      const width = Math.max(20, (stream.columns ?? 100) - 1);
      stream.write(text.length > width ? `${text.slice(0, width - 1)}…` : text);
      shown = true;
    },
    line(text) {
      clear();
      stream.write(`${text}\n`);
    },
  };
}
