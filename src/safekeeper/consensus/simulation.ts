/**
 * Deterministic simulation of multi-safekeeper consensus (FoundationDB /
 * TigerBeetle style): N safekeepers with real ControlFile + WalStorage code on
 * FaultyFS-over-MemoryFS, one seeded PRNG choosing every action, and an
 * oracle that checks the safety invariants after every step.
 *
 * What runs for real: StoreTimeline (vote, truncateAndSetHistory, appends),
 * the endpoint-start coordinator (runEndpointStart), the member side of an
 * election and WAL fetches from a donor (recovery.ts), commit_lsn
 * (commit_lsn.ts), WAL storage recovery after power loss (torn writes,
 * reverted unsynced data and directory operations), WAL record framing.
 * What is simulated: the network (a node is up or down, reachable or
 * isolated; calls to it fail with "unavailable"), the coordinator dying after
 * its k-th request, the compute of each term (it writes valid WAL records and
 * streams them to the members that joined its term, like a walsender: from
 * the member's flush LSN, sometimes cut inside a record), and peer gossip (each
 * node keeps possibly stale reports of the others, as peers.ts does).
 *
 * Actions per step (weights in ACTION_WEIGHTS): write WAL, stream to a member,
 * stream from an *old* compute (must be refused once fenced), refresh a
 * gossip report, recompute commit_lsn, persist progress, elect (sometimes
 * with a coordinator crash, sometimes two coordinators at once), catch a
 * member up, crash (power loss), restart, isolate/heal. Storage faults
 * (crash at the n-th mutation, torn write, EIO) are armed at random before
 * member operations.
 *
 * Invariants checked after every step:
 * * terms never decrease on any node (across restarts too);
 * * the committed prefix (the oracle: the longest of every compute's
 *   acknowledged WAL — q members reported a flush at or past it — and every
 *   commit_lsn a node computed) only grows and never changes: every new
 *   commit agrees with it;
 * * every successful election's history contains the committed prefix and
 *   its start LSN is at or past it (nothing acknowledged is lost);
 * * at least q nodes hold the committed prefix (their effective histories
 *   agree with it up to its end and their WAL reaches it);
 * * every node's WAL bytes are exactly the bytes the computes of the terms in
 *   its history wrote (checked every BYTE_CHECK_EVERY_STEPS steps and at the end);
 * * only the expected errors occur (refused terms, unavailability, injected
 *   crashes) — anything else (a corrupt history, a failed assertion) fails.
 * At the end the network heals, every node restarts, and liveness is
 * checked: an election succeeds, every node catches up, new WAL commits on
 * all of them and their WAL is byte-identical.
 *
 * A failing run throws SimulationFailure with the seed and the last actions;
 * `node dist/src/safekeeper/consensus/simulation.js --seed S --members N`
 * replays it.
 */
import { StrataError } from "../../lib/errors.js";
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from "../../lib/id.js";
import { formatLsn, lsn as toLsn, type Lsn } from "../../lib/lsn.js";
import { WalWriter } from "../../formats/wal/wal_writer.js";
import { encodeRecord } from "../../formats/wal/xlog_record.js";
import type { TimelinePersistentState } from "../control_file.js";
import type { DurableFS } from "../durable_fs.js";
import { seededRandom } from "../../lib/prng.js";
import { FaultyFS, InjectedIoError, SimulatedCrash, type Fault } from "../faulty_fs.js";
import {
  formatTermHistory,
  highestCommonPoint,
  historyUpTo,
  INVALID_TERM,
  lastTerm,
  termAt,
  type Term,
  type TermHistory,
} from "../term_history.js";
import { TimelineStore } from "../timeline_dir.js";
import { effectiveHistory, formatSnapshot, TermRefusedError, type AcceptorSnapshot, type ConsensusTimeline, type VoteResult } from "./acceptor_state.js";
import { quorumCommitLsn, quorumSize, type PositionReport } from "./commit_lsn.js";
import { runEndpointStart, type ConsensusClient, type ElectedRequest, type EndpointStartResult } from "./endpoint_start.js";
import { MemoryFS } from "./memory_fs.js";
import { catchUpFromPeers, joinHistory, serveWal, type PeerHandle, type WalSource } from "./recovery.js";
import { StoreTimeline } from "./store_timeline.js";

/** Smallest segment size PostgreSQL allows: keeps zero-filled segments cheap while still crossing boundaries. */
const SIM_SEG_BYTES = 1024 * 1024;
const TIMELINE_START = toLsn(SIM_SEG_BYTES);
const SYSTEM_ID = 7_300_000_000_000_000_001n;
const TENANT = parseTenantId("5e1f0000000000000000000000000001");
const TIMELINE = parseTimelineId("5e1f0000000000000000000000000002");
/** Full byte comparison of every node's WAL this often (it reads all WAL; the other checks are cheap). */
const BYTE_CHECK_EVERY_STEPS = 10;
/** Actions kept for the failure report. */
const TRACE_KEEP = 60;
/** Elections tried at the end before liveness is declared failed (all nodes up and reachable by then). */
const FINAL_ELECTION_ATTEMPTS = 5;

const ACTION_WEIGHTS = {
  write: 14,
  stream: 22,
  streamOld: 4,
  gossip: 12,
  commit: 8,
  persist: 3,
  elect: 5,
  catchUp: 6,
  crash: 3,
  restart: 5,
  partition: 3,
} as const;
type Action = keyof typeof ACTION_WEIGHTS;

/**
 * What the simulation drives on each node: the consensus surface plus a
 * compute's appends (durable when they return) and lazy persistence.
 * StoreTimeline implements it; tests adapt the safekeeper's Timeline too.
 */
export interface SimTimeline extends ConsensusTimeline {
  /** WAL from the compute of `term` at the write LSN; not durable yet. */
  writeWalFromCompute(term: Term, startLsn: Lsn, bytes: Uint8Array): Promise<unknown>;
  /** fsync; the flush LSN to report to the compute of `term` (refused once a newer term was promised). */
  flushForCompute(term: Term): Promise<Lsn>;
  persistProgress(): Promise<unknown>;
  readonly commitLsn: Lsn;
  close(): Promise<void>;
}

/** How to create and reopen a node's timeline. */
export interface SimTimelineKind {
  readonly name: string;
  create(fs: DurableFS, root: string, initial: TimelinePersistentState): Promise<SimTimeline>;
  open(fs: DurableFS, root: string, tenantId: TenantId, timelineId: TimelineId): Promise<SimTimeline>;
}

export const storeTimelineKind: SimTimelineKind = {
  name: "StoreTimeline",
  create: async (fs, root, initial) => new StoreTimeline(await TimelineStore.create(fs, root, initial)),
  open: (fs, root, tenantId, timelineId) => StoreTimeline.open(fs, root, tenantId, timelineId),
};

export interface SimulationOptions {
  /** Timeline implementation under test (default StoreTimeline). */
  kind?: SimTimelineKind;
  seed: number;
  members: number;
  steps: number;
  /** Probability that a member operation runs with a storage fault armed. */
  faultProbability?: number;
  /** Full WAL byte comparison every this many steps (default BYTE_CHECK_EVERY_STEPS). */
  byteCheckEvery?: number;
  /** Called with every action line (for replaying a seed verbosely). */
  trace?: (line: string) => void;
}

export interface SimulationReport {
  seed: number;
  elections: number;
  electionsFailed: number;
  crashes: number;
  faultsArmed: number;
  committedLsn: Lsn;
  walBytes: number;
  refusedOldWrites: number;
}

export class SimulationFailure extends Error {
  override name = "SimulationFailure";
  constructor(
    readonly seed: number,
    readonly members: number,
    message: string,
    readonly trace: string[],
  ) {
    super(`seed ${seed} (${members} members): ${message}\n  replay: node dist/src/safekeeper/consensus/simulation.js --seed ${seed} --members ${members} --verbose\n  last actions:\n    ${trace.join("\n    ")}`);
  }
}

class SimNode {
  readonly mem = new MemoryFS();
  fs: FaultyFS;
  tl: SimTimeline | undefined;
  isolated = false;
  /** Highest term ever observed here (terms must never go down, restarts included). */
  maxTerm: Term = INVALID_TERM;
  /** commit_lsn observed in this incarnation (monotonic while up). */
  commitSeen: Lsn = TIMELINE_START;
  /** Latest known state: while up, the last snapshot; while down, what a restart would find. */
  last: AcceptorSnapshot | undefined;
  /** True once `last` describes the disk after the latest crash. */
  lastIsDisk = false;
  /** Gossip: the latest report this node received from each peer (possibly stale). */
  readonly reports = new Map<number, PositionReport>();
  constructor(
    readonly id: number,
    seed: number,
  ) {
    this.fs = new FaultyFS(this.mem, { seed });
  }
  get root(): string {
    return `/sk${this.id}`;
  }
  get up(): boolean {
    return this.tl !== undefined;
  }
}

/** The compute of one term: writes WAL records after its start LSN and streams them. */
class SimCompute {
  /** WAL bytes from startLsn (padding first, then the writer's output). */
  private data = new Uint8Array(64 * 1024);
  private len = 0;
  private readonly writer: WalWriter;
  private prev: Lsn;
  readonly recordEnds: Lsn[] = [];
  readonly flushReports = new Map<number, Lsn>();
  acked: Lsn;

  constructor(
    readonly term: Term,
    readonly startLsn: Lsn,
    readonly history: TermHistory,
    prevRecordLsn: Lsn,
  ) {
    this.prev = prevRecordLsn;
    this.acked = startLsn;
    const aligned = toLsn((startLsn + 7n) & ~7n);
    this.append(new Uint8Array(Number(aligned - startLsn)));
    this.writer = new WalWriter({ startLsn: aligned, walSegSizeBytes: SIM_SEG_BYTES, systemId: SYSTEM_ID });
  }

  get endLsn(): Lsn {
    return toLsn(this.startLsn + BigInt(this.len));
  }

  /** Appends one record; returns its start and end. */
  writeRecord(rand: () => number, recordStarts: Map<string, Lsn>): { lsn: Lsn; endLsn: Lsn } {
    const big = rand() < 0.08;
    const size = big ? 8_000 + Math.floor(rand() * 60_000) : 8 + Math.floor(rand() * 600);
    const main = new Uint8Array(size);
    for (let i = 0; i < size; i += 64) main[i] = Math.floor(rand() * 256);
    const placed = this.writer.appendRecord(encodeRecord({ rmid: 10, info: 0, xid: 1000 + this.recordEnds.length, prevLsn: this.prev, mainData: main }));
    this.append(this.writer.take());
    this.prev = placed.lsn;
    this.recordEnds.push(placed.endLsn);
    recordStarts.set(`${this.term}:${placed.endLsn}`, placed.lsn);
    return placed;
  }

  bytes(from: Lsn, to: Lsn): Uint8Array {
    return this.data.subarray(Number(from - this.startLsn), Number(to - this.startLsn));
  }

  private append(b: Uint8Array): void {
    if (this.len + b.length > this.data.length) {
      const grown = new Uint8Array(Math.max(this.len + b.length, this.data.length * 2));
      grown.set(this.data.subarray(0, this.len));
      this.data = grown;
    }
    this.data.set(b, this.len);
    this.len += b.length;
  }
}

/** The committed prefix: WAL up to `lsn`, described by `history`. */
interface Committed {
  lsn: Lsn;
  history: TermHistory;
  source: string;
}

class UnexpectedError extends Error {}

export async function runSimulation(opts: SimulationOptions): Promise<SimulationReport> {
  const sim = new Simulation(opts);
  try {
    await sim.run();
  } catch (e) {
    if (e instanceof SimulationFailure) throw e;
    throw new SimulationFailure(opts.seed, opts.members, `${(e as Error).stack ?? String(e)}`, sim.trace);
  }
  return sim.report();
}

class Simulation {
  readonly rand: () => number;
  readonly nodes: SimNode[] = [];
  readonly q: number;
  readonly trace: string[] = [];
  private readonly computes = new Map<Term, SimCompute>();
  private current: SimCompute | undefined;
  private readonly recordStarts = new Map<string, Lsn>();
  private committed: Committed = { lsn: TIMELINE_START, history: [], source: "timeline start" };
  private readonly inflight = new Set<Promise<unknown>>();
  private unexpected: unknown;
  private faultsEnabled = true;
  private readonly faultProbability: number;
  private readonly kind: SimTimelineKind;
  private step = 0;
  private readonly stats = { elections: 0, electionsFailed: 0, crashes: 0, faultsArmed: 0, refusedOldWrites: 0 };

  constructor(private readonly opts: SimulationOptions) {
    this.rand = seededRandom(opts.seed);
    this.q = quorumSize(opts.members);
    this.faultProbability = opts.faultProbability ?? 0.04;
    this.kind = opts.kind ?? storeTimelineKind;
    for (let i = 1; i <= opts.members; i++) this.nodes.push(new SimNode(i, this.int(1 << 30)));
  }

  report(): SimulationReport {
    return { seed: this.opts.seed, ...this.stats, committedLsn: this.committed.lsn, walBytes: Number(this.committed.lsn - TIMELINE_START) };
  }

  private int(n: number): number {
    return Math.floor(this.rand() * n);
  }

  private pick<T>(xs: readonly T[]): T | undefined {
    return xs.length === 0 ? undefined : xs[this.int(xs.length)];
  }

  private log(line: string): void {
    const l = `[${this.step}] ${line}`;
    this.trace.push(l);
    if (this.trace.length > TRACE_KEEP) this.trace.shift();
    this.opts.trace?.(l);
  }

  private fail(message: string): never {
    throw new SimulationFailure(this.opts.seed, this.opts.members, message, this.trace);
  }

  // -------------------------------------------------------------------------
  // Main loop
  // -------------------------------------------------------------------------

  async run(): Promise<void> {
    for (const n of this.nodes) {
      const initial: TimelinePersistentState = {
        tenantId: TENANT,
        timelineId: TIMELINE,
        systemId: SYSTEM_ID,
        pgVersion: 150000,
        walSegSizeBytes: SIM_SEG_BYTES,
        timelineStartLsn: TIMELINE_START,
        term: INVALID_TERM,
        termHistory: [],
        flushLsnHint: TIMELINE_START,
        commitLsn: TIMELINE_START,
        backupLsn: TIMELINE_START,
        remoteConsistentLsn: TIMELINE_START,
        peerHorizonLsn: TIMELINE_START,
      };
      n.tl = await this.kind.create(n.fs, n.root, initial);
    }
    const actions = Object.entries(ACTION_WEIGHTS) as [Action, number][];
    const total = actions.reduce((a, [, w]) => a + w, 0);
    for (this.step = 1; this.step <= this.opts.steps; this.step++) {
      let r = this.rand() * total;
      let action: Action = "write";
      for (const [a, w] of actions) {
        if (r < w) {
          action = a;
          break;
        }
        r -= w;
      }
      if (this.current === undefined && this.rand() < 0.5) action = "elect";
      await this.act(action);
      await this.settle();
      await this.checkInvariants(this.step % (this.opts.byteCheckEvery ?? BYTE_CHECK_EVERY_STEPS) === 0);
    }
    await this.finish();
  }

  private async act(action: Action): Promise<void> {
    const up = this.nodes.filter((n) => n.up);
    const reachable = up.filter((n) => !n.isolated);
    switch (action) {
      case "write": {
        const c = this.current;
        if (c === undefined) return;
        const k = 1 + this.int(4);
        for (let i = 0; i < k; i++) c.writeRecord(this.rand, this.recordStarts);
        this.log(`write: term ${c.term} compute appends ${k} records, WAL end ${formatLsn(c.endLsn)}`);
        return;
      }
      case "stream":
      case "streamOld": {
        const olds = [...this.computes.values()].filter((c) => c !== this.current);
        const c = action === "stream" ? this.current : this.pick(olds);
        const n = this.pick(reachable);
        if (c === undefined || n === undefined) return;
        await this.stream(c, n);
        return;
      }
      case "gossip": {
        const n = this.pick(reachable);
        const p = this.pick(reachable.filter((x) => x !== n));
        if (n === undefined || p === undefined) return;
        try {
          const s = await this.call(p, (tl) => tl.snapshot());
          n.reports.set(p.id, { termHistory: s.termHistory, flushRecordLsn: s.flushRecordLsn });
          this.log(`gossip: ${n.id} learns ${p.id}: ${formatSnapshot(s)}`);
        } catch (e) {
          this.expectFailure(e, `gossip ${p.id}->${n.id}`);
        }
        return;
      }
      case "commit": {
        const n = this.pick(up);
        if (n === undefined) return;
        try {
          const self = await this.call(n, (tl) => tl.snapshot(), { allowIsolated: true });
          const c = quorumCommitLsn({ self, peers: [...n.reports.values()], members: this.opts.members });
          if (c !== undefined) {
            n.tl!.setCommitLsn(c);
            this.log(`commit: node ${n.id} computes commit_lsn ${formatLsn(c)} (self ${formatSnapshot(self)})`);
          }
        } catch (e) {
          this.expectFailure(e, `commit on ${n.id}`);
        }
        return;
      }
      case "persist": {
        const n = this.pick(up);
        if (n === undefined) return;
        try {
          await this.call(n, (tl) => tl.persistProgress(), { allowIsolated: true, fault: true });
          this.log(`persist: node ${n.id} stores progress`);
        } catch (e) {
          this.expectFailure(e, `persist on ${n.id}`);
        }
        return;
      }
      case "elect": {
        const runs = [this.elect("")];
        // Races: a second coordinator, or the current compute streaming while the election runs.
        if (this.rand() < 0.15) runs.push(this.elect("B"));
        const c = this.current;
        if (c !== undefined && this.rand() < 0.4) {
          if (this.rand() < 0.5) c.writeRecord(this.rand, this.recordStarts);
          // One walsender per member, as with PostgreSQL: distinct nodes.
          const targets = reachable.filter(() => this.rand() < 0.5);
          for (const n of targets) {
            // Start at a random point of the election (read, vote or join phase).
            const delay = this.int(60);
            runs.push(
              (async () => {
                for (let i = delay; i > 0; i--) await Promise.resolve();
                await this.stream(c, n, false, true);
              })(),
            );
          }
        }
        await Promise.all(runs);
        return;
      }
      case "catchUp": {
        const c = this.current;
        const n = this.pick(reachable);
        if (c === undefined || n === undefined) return;
        await this.catchUp(n, c.term);
        return;
      }
      case "crash": {
        const n = this.pick(up);
        if (n === undefined) return;
        await this.crash(n, "crash action");
        return;
      }
      case "restart": {
        const n = this.pick(this.nodes.filter((x) => !x.up));
        if (n === undefined) return;
        await this.restart(n);
        return;
      }
      case "partition": {
        const n = this.pick(this.nodes);
        if (n === undefined) return;
        n.isolated = !n.isolated;
        this.log(`partition: node ${n.id} ${n.isolated ? "isolated" : "reachable again"}`);
        return;
      }
    }
  }

  // -------------------------------------------------------------------------
  // Node operations, network and faults
  // -------------------------------------------------------------------------

  /**
   * Runs `fn` on node `n` as a request over the simulated network: refused
   * when the node is down or isolated; a storage failure crashes the node.
   */
  private call<T>(n: SimNode, fn: (tl: SimTimeline) => Promise<T>, o: { allowIsolated?: boolean; fault?: boolean } = {}): Promise<T> {
    const p = (async () => {
      // A few scheduler turns: lets concurrent requests interleave differently per seed.
      for (let i = this.int(3); i > 0; i--) await Promise.resolve();
      if (n.tl === undefined) throw new StrataError("unavailable", `simulated: node ${n.id} is down`);
      if (n.isolated && !o.allowIsolated) throw new StrataError("unavailable", `simulated: node ${n.id} is unreachable`);
      if (o.fault && this.faultsEnabled && this.rand() < this.faultProbability) this.armFault(n);
      const tl = n.tl;
      try {
        return await fn(tl);
      } catch (e) {
        if (n.tl === tl && (n.fs.crashed || isStorageFailure(e))) await this.crash(n, `storage failure: ${(e as Error).message}`);
        throw e;
      }
    })();
    this.inflight.add(p);
    void p.then(
      () => this.inflight.delete(p),
      () => this.inflight.delete(p),
    );
    return p;
  }

  private armFault(n: SimNode): void {
    const r = this.rand();
    const effect: Fault["effect"] = r < 0.45 ? "crash" : r < 0.85 ? "torn" : "error";
    const fault: Fault = effect === "torn" ? { op: "write", nth: 1 + this.int(6), effect } : { op: "mutation", nth: 1 + this.int(10), effect };
    n.fs.addFault(fault); // counted from now on
    this.stats.faultsArmed++;
    this.log(`fault: node ${n.id} armed ${effect} at ${fault.op} #${fault.nth} from now`);
  }

  /**
   * Coordinator <-> member latency, in scheduler turns: long enough that a
   * compute's write and fsync can land between an election's read and vote.
   */
  private async networkDelay(): Promise<void> {
    for (let i = this.int(120); i > 0; i--) await Promise.resolve();
  }

  /** Waits for requests still running after their caller gave up (a dead coordinator's last calls). */
  private async settle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    // Nodes whose storage died in a background step (pre-allocation) are crashed now.
    for (const n of this.nodes) if (n.up && n.fs.crashed) await this.crash(n, "storage crashed in the background");
    if (this.unexpected !== undefined) {
      const e = this.unexpected;
      this.unexpected = undefined;
      this.fail(`unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }

  /** Records an error that the protocol must never produce (checked in settle). */
  private expectFailure(e: unknown, what: string): void {
    if (isExpected(e)) {
      this.log(`  ${what}: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
      return;
    }
    this.unexpected ??= new UnexpectedError(`${what}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  }

  private async crash(n: SimNode, why: string): Promise<void> {
    if (n.tl === undefined) return;
    n.tl = undefined;
    await n.fs.powerLoss().catch((e: unknown) => {
      this.unexpected ??= e;
    });
    n.lastIsDisk = false;
    this.stats.crashes++;
    this.log(`crash: node ${n.id} loses power (${why})`);
  }

  private async restart(n: SimNode): Promise<void> {
    n.fs = new FaultyFS(n.mem, { seed: this.int(1 << 30) });
    try {
      n.tl = await this.kind.open(n.fs, n.root, TENANT, TIMELINE);
    } catch (e) {
      this.fail(`node ${n.id} cannot reopen after a crash: ${(e as Error).stack ?? String(e)}`);
    }
    n.commitSeen = n.tl.commitLsn;
    n.reports.clear();
    const s = await n.tl.snapshot();
    this.log(`restart: node ${n.id} recovered: ${formatSnapshot(s)}`);
  }

  private clientFor(n: SimNode, budget: { left: number } | undefined): ConsensusClient {
    const spend = (what: string) => {
      if (budget === undefined) return;
      if (budget.left <= 0) throw new StrataError("unavailable", `simulated coordinator crash before ${what} to node ${n.id}`);
      budget.left--;
    };
    return {
      id: n.id,
      state: async () => {
        spend("state");
        await this.networkDelay();
        const s = await this.call(n, (tl) => tl.snapshot());
        await this.networkDelay();
        return s;
      },
      vote: async (t: Term): Promise<VoteResult> => {
        spend("vote");
        await this.networkDelay();
        const v = await this.call(n, (tl) => tl.vote(t), { fault: true });
        await this.networkDelay();
        return v;
      },
      elected: async (req: ElectedRequest, signal: AbortSignal) => {
        spend("elected");
        await this.networkDelay();
        return await this.call(n, (tl) => joinHistory(tl, { term: req.term, history: req.history, endLsn: req.startLsn }, this.sourceFor(n, req.donorId), signal), { fault: true });
      },
    };
  }

  /** WAL fetched by `member` from `donorId` over the simulated network. */
  private sourceFor(member: SimNode, donorId: number): WalSource {
    const donor = this.nodes[donorId - 1]!;
    return {
      name: `node ${donorId}`,
      fetch: async (start, maxBytes, end, history) => {
        if (member.isolated) throw new StrataError("unavailable", `simulated: node ${member.id} is unreachable`);
        // Small chunks: exercises the fetch loop and interleaving with other requests.
        const n = Math.min(maxBytes, 4096 + this.int(64 * 1024));
        return await this.call(donor, (tl) => serveWal(tl, start, n, end, history));
      },
    };
  }

  // -------------------------------------------------------------------------
  // Protocol actions
  // -------------------------------------------------------------------------

  private async elect(tag: string): Promise<void> {
    const budget = this.faultsEnabled && this.rand() < 0.3 ? { left: this.int(3 * this.opts.members) } : undefined;
    const clients = this.nodes.map((n) => this.clientFor(n, budget));
    const ac = new AbortController();
    let result: EndpointStartResult;
    this.stats.elections++;
    try {
      result = await runEndpointStart({ clients, signal: ac.signal });
    } catch (e) {
      this.stats.electionsFailed++;
      this.expectFailure(e, `elect${tag}${budget ? ` (coordinator budget ${budget.left})` : ""}`);
      return;
    }
    this.log(`elect${tag}: term ${result.term} start ${formatLsn(result.startLsn)} donor ${result.donorId} joined [${result.joined.join(",")}] history ${formatTermHistory(result.history)}`);
    this.checkElection(result);
    const prevTerm = termOfByteBefore(result.history, result.startLsn);
    let prev: Lsn = toLsn(0);
    if (result.startLsn > TIMELINE_START) {
      const p = prevTerm === undefined ? undefined : this.recordStarts.get(`${prevTerm}:${result.startLsn}`);
      if (p === undefined) this.fail(`term ${result.term} starts at ${formatLsn(result.startLsn)}, which is not the end of a record written in term ${prevTerm}`);
      prev = p;
    }
    const c = new SimCompute(result.term, result.startLsn, result.history, prev);
    this.computes.set(result.term, c);
    if (this.current === undefined || c.term > this.current.term) this.current = c;
  }

  /** A compute streams to one member from the member's flush LSN, like a walsender after START_REPLICATION. */
  private async stream(c: SimCompute, n: SimNode, full = false, racing = false): Promise<void> {
    try {
      const s = await this.call(n, (tl) => tl.snapshot());
      // Like the acceptor on (re)connecting: make what was written durable, stream from there.
      const from = s.term === c.term ? await this.call(n, (tl) => tl.flushForCompute(c.term), { fault: true }) : s.flushLsn;
      if (from < c.startLsn || from > c.endLsn) {
        this.log(`stream: term ${c.term} cannot serve node ${n.id} from ${formatLsn(from)} (compute WAL ${formatLsn(c.startLsn)}..${formatLsn(c.endLsn)})`);
        return;
      }
      const avail = Number(c.endLsn - from);
      const len = full || this.rand() < 0.6 ? avail : this.int(avail + 1);
      const bytes = c.bytes(from, toLsn(from + BigInt(len)));
      // Write and fsync are separate steps (group commit), so other requests — a vote — can run in between.
      await this.call(n, (tl) => tl.writeWalFromCompute(c.term, from, bytes), { fault: true });
      const flush = await this.call(n, (tl) => tl.flushForCompute(c.term), { fault: true });
      // Fencing: a member that promised a newer term never takes an older compute's WAL.
      if (s.term > c.term) this.fail(`node ${n.id} with term ${s.term} accepted WAL of term ${c.term}`);
      c.flushReports.set(n.id, flush);
      this.log(`stream: term ${c.term} -> node ${n.id} [${formatLsn(from)}, ${formatLsn(toLsn(from + BigInt(len)))}) flush ${formatLsn(flush)}`);
      this.updateAcked(c);
    } catch (e) {
      if (e instanceof TermRefusedError && c !== this.current) this.stats.refusedOldWrites++;
      // Racing an election, the member's WAL end can move (truncation, catch-up) between the
      // walsender's start and its write: the acceptor then reconnects from the new end.
      if (racing && e instanceof StrataError && e.message.includes("not contiguous")) {
        this.log(`  stream term ${c.term} -> node ${n.id}: raced a truncation (${e.message})`);
        return;
      }
      this.expectFailure(e, `stream term ${c.term} -> node ${n.id}`);
    }
  }

  /** The compute's acknowledged LSN: the q-th highest flush reported in its term (synchronous_standby_names = ANY q). */
  private updateAcked(c: SimCompute): void {
    const flushes = [...c.flushReports.values()].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
    const acked = flushes[this.q - 1];
    if (acked === undefined || acked <= c.acked) return;
    c.acked = acked;
    // Acknowledged commits end at record boundaries at or below the acked LSN.
    let end: Lsn | undefined = acked >= c.startLsn ? c.startLsn : undefined;
    for (const r of c.recordEnds) if (r <= acked) end = r;
    if (end !== undefined) this.addCommitted({ lsn: end, history: c.history, source: `term ${c.term} compute ack ${formatLsn(acked)}` });
  }

  private async catchUp(n: SimNode, t: Term): Promise<void> {
    const peers: PeerHandle[] = this.nodes
      .filter((p) => p !== n)
      .map((p) => ({
        id: p.id,
        snapshot: () => {
          if (n.isolated) return Promise.reject(new StrataError("unavailable", `simulated: node ${n.id} is unreachable`));
          return this.call(p, (tl) => tl.snapshot());
        },
        source: this.sourceFor(n, p.id),
      }));
    try {
      const s = await this.call(n, (tl) => catchUpFromPeers(tl, t, peers, new AbortController().signal), { fault: true });
      this.log(`catchUp: node ${n.id} to term ${t}: ${s === undefined ? "no peer has joined it" : formatSnapshot(s)}`);
    } catch (e) {
      this.expectFailure(e, `catchUp node ${n.id} to term ${t}`);
    }
  }

  // -------------------------------------------------------------------------
  // Oracle
  // -------------------------------------------------------------------------

  /** Every commit must extend or agree with the committed prefix. */
  private addCommitted(c: Committed): void {
    const o = this.committed;
    const upTo = c.lsn < o.lsn ? c.lsn : o.lsn;
    if (!agreeUpTo(o.history, c.history, upTo)) {
      this.fail(`${c.source} commits ${formatLsn(c.lsn)} with history ${formatTermHistory(c.history)}, contradicting the committed prefix ${formatLsn(o.lsn)} ${formatTermHistory(o.history)} (${o.source})`);
    }
    if (c.lsn > o.lsn) this.committed = c;
  }

  private checkElection(r: EndpointStartResult): void {
    const o = this.committed;
    if (r.startLsn < o.lsn) this.fail(`term ${r.term} starts at ${formatLsn(r.startLsn)}, below the committed ${formatLsn(o.lsn)} (${o.source}): acknowledged WAL lost`);
    if (!agreeUpTo(o.history, r.history, o.lsn)) {
      this.fail(`term ${r.term}'s history ${formatTermHistory(r.history)} diverges from the committed prefix ${formatLsn(o.lsn)} ${formatTermHistory(o.history)} (${o.source})`);
    }
  }

  private async checkInvariants(checkBytes: boolean): Promise<void> {
    let holding = 0;
    for (const n of this.nodes) {
      let s = n.last;
      if (n.tl !== undefined) {
        try {
          s = await n.tl.snapshot();
          if (checkBytes) await this.checkBytes(n, s);
        } catch (e) {
          // A fault armed earlier fired in a background store (a timeline's lazy progress persistence).
          if (!n.fs.crashed && !isStorageFailure(e)) throw e;
          await this.crash(n, `storage failure in the background: ${(e as Error).message}`);
          continue;
        }
        n.last = s;
        if (s.commitLsn < n.commitSeen) this.fail(`node ${n.id}: commit_lsn went back from ${formatLsn(n.commitSeen)} to ${formatLsn(s.commitLsn)}`);
        n.commitSeen = s.commitLsn;
        if (s.commitLsn > TIMELINE_START) {
          const h = historyUpTo(s.termHistory, s.commitLsn);
          this.addCommitted({ lsn: s.commitLsn, history: h, source: `node ${n.id} commit_lsn` });
        }
      }
      if (s === undefined || (n.tl === undefined && !n.lastIsDisk)) continue;
      if (s.term < n.maxTerm) this.fail(`node ${n.id}: term went back from ${n.maxTerm} to ${s.term}`);
      n.maxTerm = s.term;
      if (this.holdsCommitted(s)) holding++;
    }
    // Crashed nodes count with what a restart would find on their disks (computed only when needed:
    // recovering a copy of the disk costs as much as a restart).
    for (const n of this.nodes) {
      if (holding >= this.q || n.tl !== undefined || n.lastIsDisk) continue;
      const probe = await this.kind.open(new FaultyFS(n.mem.clone()), n.root, TENANT, TIMELINE).catch((e: unknown) =>
        this.fail(`node ${n.id} cannot reopen after a crash: ${(e as Error).stack ?? String(e)}`),
      );
      const s = await probe.snapshot();
      await probe.close();
      n.last = s;
      n.lastIsDisk = true;
      if (s.term < n.maxTerm) this.fail(`node ${n.id}: term went back from ${n.maxTerm} to ${s.term}`);
      n.maxTerm = s.term;
      if (this.holdsCommitted(s)) holding++;
    }
    if (holding < this.q && this.committed.lsn > TIMELINE_START) {
      this.fail(`only ${holding} nodes hold the committed prefix ${formatLsn(this.committed.lsn)} ${formatTermHistory(this.committed.history)} (${this.committed.source}); need ${this.q}`);
    }
  }

  private holdsCommitted(s: AcceptorSnapshot): boolean {
    return s.flushLsn >= this.committed.lsn && agreeUpTo(effectiveHistory(s), this.committed.history, this.committed.lsn);
  }

  /** The node's WAL equals, byte for byte, what the computes of its history's terms wrote. */
  private async checkBytes(n: SimNode, s: AcceptorSnapshot): Promise<void> {
    const h = effectiveHistory(s);
    const wal = await n.tl!.readWal(TIMELINE_START, Number(s.flushLsn - TIMELINE_START), s.flushLsn);
    if (wal.length !== Number(s.flushLsn - TIMELINE_START)) this.fail(`node ${n.id}: read ${wal.length} bytes of WAL, flush says ${Number(s.flushLsn - TIMELINE_START)}`);
    for (let i = 0; i < h.length; i++) {
      const e = h[i]!;
      const end = h[i + 1]?.lsn ?? s.flushLsn;
      if (end <= e.lsn) continue;
      const c = this.computes.get(e.term);
      const got = wal.subarray(Number(e.lsn - TIMELINE_START), Number(end - TIMELINE_START));
      if (c === undefined) {
        // A term whose election did not complete has no compute; its members may only hold the
        // alignment padding after its start (WAL recovery ends at the next MAXALIGNed position).
        if (end > ((e.lsn + 7n) & ~7n) || got.some((b) => b !== 0)) {
          this.fail(`node ${n.id}: history ${formatTermHistory(s.termHistory)} gives WAL up to ${formatLsn(end)} to term ${e.term}, which no compute wrote`);
        }
        continue;
      }
      if (end > c.endLsn) this.fail(`node ${n.id}: holds WAL of term ${e.term} up to ${formatLsn(end)}, past what its compute wrote (${formatLsn(c.endLsn)})`);
      const want = c.bytes(e.lsn, end);
      if (Buffer.compare(got, want) !== 0) {
        let at = 0;
        while (got[at] === want[at]) at++;
        this.fail(`node ${n.id}: WAL at ${formatLsn(toLsn(e.lsn + BigInt(at)))} differs from what term ${e.term}'s compute wrote (history ${formatTermHistory(s.termHistory)})`);
      }
    }
    if (h.length === 0 && s.flushLsn > TIMELINE_START) this.fail(`node ${n.id}: WAL up to ${formatLsn(s.flushLsn)} with an empty history`);
  }

  // -------------------------------------------------------------------------
  // Liveness at the end
  // -------------------------------------------------------------------------

  private async finish(): Promise<void> {
    this.faultsEnabled = false;
    this.log("finish: heal, restart everything, elect, catch up, write, stream, commit");
    for (const n of this.nodes) {
      n.isolated = false;
      // A power cycle for everyone: also drops storage faults still armed in the old FaultyFS.
      if (n.up) await this.crash(n, "final power cycle");
      await this.restart(n);
    }
    let elected = false;
    for (let i = 0; i < FINAL_ELECTION_ATTEMPTS && !elected; i++) {
      const before = this.current;
      await this.elect("(final)");
      await this.settle();
      elected = this.current !== before;
    }
    const c = this.current;
    if (!elected || c === undefined) this.fail(`no election succeeded with every node up and reachable`);
    for (const n of this.nodes) await this.catchUp(n, c.term);
    for (let i = 0; i < 3; i++) c.writeRecord(this.rand, this.recordStarts);
    for (const n of this.nodes) await this.stream(c, n, true);
    await this.settle();
    for (const n of this.nodes) {
      const s = await n.tl!.snapshot();
      if (s.flushLsn !== c.endLsn) this.fail(`node ${n.id} ends at ${formatLsn(s.flushLsn)}, the compute at ${formatLsn(c.endLsn)}: ${formatSnapshot(s)}`);
    }
    for (const n of this.nodes) {
      for (const p of this.nodes) {
        if (p === n) continue;
        const s = await p.tl!.snapshot();
        n.reports.set(p.id, { termHistory: s.termHistory, flushRecordLsn: s.flushRecordLsn });
      }
      const self = await n.tl!.snapshot();
      const commit = quorumCommitLsn({ self, peers: [...n.reports.values()], members: this.opts.members });
      const lastRecord = c.recordEnds[c.recordEnds.length - 1]!;
      if (commit !== lastRecord) this.fail(`node ${n.id}: commit_lsn ${commit === undefined ? "undefined" : formatLsn(commit)} with everyone caught up, expected ${formatLsn(lastRecord)}`);
      n.tl!.setCommitLsn(commit);
    }
    await this.checkInvariants(true);
    const first = await this.nodes[0]!.tl!.readWal(TIMELINE_START, Number(c.endLsn - TIMELINE_START), c.endLsn);
    for (const n of this.nodes.slice(1)) {
      const w = await n.tl!.readWal(TIMELINE_START, Number(c.endLsn - TIMELINE_START), c.endLsn);
      if (Buffer.compare(first, w) !== 0) this.fail(`node ${n.id}'s WAL differs from node 1's after everyone caught up`);
    }
    for (const n of this.nodes) await n.tl!.close();
  }
}

/** The term in force for the byte just before `at` (the one that wrote the record ending at `at`). */
function termOfByteBefore(h: TermHistory, at: Lsn): Term | undefined {
  if (at === 0n) return undefined;
  // Entries starting at `at` wrote nothing before it.
  const before = h.filter((e) => e.lsn < at);
  return termAt(before, toLsn(at - 1n));
}

/** True when WAL described by `a` and by `b` is provably the same up to `upTo`. */
function agreeUpTo(a: TermHistory, b: TermHistory, upTo: Lsn): boolean {
  if (upTo <= TIMELINE_START) return true;
  const ha = historyUpTo(a, upTo);
  const hb = historyUpTo(b, upTo);
  const hcp = highestCommonPoint({ history: ha, endLsn: upTo }, { history: hb, endLsn: upTo });
  return hcp !== undefined && hcp.lsn >= upTo && lastTerm(ha) !== INVALID_TERM;
}

function isStorageFailure(e: unknown): boolean {
  for (let c: unknown = e, d = 0; c !== undefined && d < 10; c = (c as { cause?: unknown }).cause, d++) {
    if (c instanceof SimulatedCrash || c instanceof InjectedIoError) return true;
    if (c instanceof StrataError && c.code === "io_error") return true;
  }
  return false;
}

/** Errors the protocol may legitimately produce under faults. */
function isExpected(e: unknown): boolean {
  if (isStorageFailure(e)) return true;
  if (e instanceof TermRefusedError) return true;
  if (e instanceof StrataError && (e.code === "unavailable" || e.code === "cancelled")) return true;
  return false;
}

// Replay one seed from the command line.
if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name: string, dflt: number) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? Number(process.argv[i + 1]) : dflt;
  };
  const verbose = process.argv.includes("--verbose");
  runSimulation({ seed: arg("--seed", 1), members: arg("--members", 3), steps: arg("--steps", 150), byteCheckEvery: arg("--byte-check-every", BYTE_CHECK_EVERY_STEPS), ...(verbose ? { trace: (l: string) => console.log(l) } : {}) }).then(
    (r) => console.log(JSON.stringify({ ...r, committedLsn: formatLsn(r.committedLsn) })),
    (e: unknown) => {
      console.error((e as Error).message);
      process.exit(1);
    },
  );
}

