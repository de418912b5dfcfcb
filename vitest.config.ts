import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The benchmark's quick run keeps both cores busy for a minute and a half: it runs on its own,
    // after this suite (vitest.bench.config.ts), so it neither slows nor disturbs the timing of others.
    exclude: [...configDefaults.exclude, 'test/integration/bench-quick.test.ts', 'test/integration/bench-hbone-transport.test.ts'],
    globalSetup: ['./test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests spawn CA and proxy processes; two cores do not like many at once.
    fileParallelism: true,
    maxWorkers: 2,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
