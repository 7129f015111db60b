import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Engine calls on real models take a while on small CI machines.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // One native addon per worker process; forks avoid loading it into several threads of one process.
    pool: 'forks',
  },
});
