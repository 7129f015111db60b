// How long-running work tells the user what it is doing, without knowing whether it writes to a terminal.

export interface Reporter {
  /** Transient progress ("training 12/40"); a terminal overwrites it in place, a log may drop it. */
  status(text: string): void;
  /** A line worth keeping. */
  line(text: string): void;
}

/** Reports nothing (library use and tests). */
export const silentReporter: Reporter = {
  status() {},
  line() {},
};
