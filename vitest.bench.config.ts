// The benchmark harness's end-to-end check (`npm run bench -- --quick`), run alone after the main suite.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/integration/bench-quick.test.ts', 'test/integration/bench-hbone-transport.test.ts'],
    globalSetup: ['./test/global-setup.ts'],
    testTimeout: 200_000,
    hookTimeout: 60_000,
    fileParallelism: false,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
