/**
 * Progress lines for long control-plane steps, on stderr (stdout is for the
 * result a script reads, e.g. the connection string on the last line).
 *
 * A step prints when it starts and when it ends with its duration; byte
 * counters print at most every PROGRESS_INTERVAL_MS with the rate. `quiet`
 * silences everything (used by --json callers that parse nothing on stderr
 * anyway, and by tests that want clean logs).
 */

/** Minimum time between two progress lines of one counter. */
export const PROGRESS_INTERVAL_MS = 1000;

export interface Progress {
  line(text: string): void;
  /** Runs `fn` between "what..." and "what: done in N ms". */
  step<T>(what: string, fn: () => Promise<T>): Promise<T>;
  /** A byte counter: call with the running total; prints rate lines, throttled. */
  bytes(what: string): { update(total: number): void; done(total: number): void };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

export function createProgress(opts: { quiet?: boolean; write?: (s: string) => void } = {}): Progress {
  const write = opts.write ?? ((s: string) => void process.stderr.write(s));
  const line = (text: string) => {
    if (!opts.quiet) write(`${text}\n`);
  };
  return {
    line,
    async step<T>(what: string, fn: () => Promise<T>): Promise<T> {
      const t0 = Date.now();
      line(`${what}...`);
      const r = await fn();
      line(`${what}: done in ${Date.now() - t0} ms`);
      return r;
    },
    bytes(what: string) {
      const t0 = Date.now();
      let last = t0;
      const rate = (total: number) => {
        const s = Math.max(1, Date.now() - t0) / 1000;
        return `${formatBytes(total)} (${formatBytes(total / s)}/s)`;
      };
      return {
        update(total: number) {
          const now = Date.now();
          if (now - last < PROGRESS_INTERVAL_MS) return;
          last = now;
          line(`${what}: ${rate(total)}`);
        },
        done(total: number) {
          line(`${what}: ${rate(total)} in ${Date.now() - t0} ms`);
        },
      };
    },
  };
}
