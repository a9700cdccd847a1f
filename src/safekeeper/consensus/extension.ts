/**
 * Plugs consensus into a safekeeper process (safekeeper.ts's extension
 * point): the consensus HTTP routes (http_routes.ts) on its management API,
 * and, when peers are configured, the peer-sync task (peers.ts) that keeps
 * commit_lsn and lagging members up to date.
 *
 * Without peers the routes still work (a single-member timeline can run the
 * endpoint-start protocol against itself) and commit_lsn is the safekeeper's
 * own (soloCommit in timeline.ts).
 */
import type { FastifyInstance } from "fastify";
import type { Safekeeper, SafekeeperExtension } from "../safekeeper.js";
import { PeerSync, type PeerAddress } from "../peers.js";
import { HttpWalSource } from "./http_client.js";
import { registerConsensusRoutes } from "./http_routes.js";

export function peerAddresses(sk: Safekeeper): PeerAddress[] {
  return sk.config.peers.map((p) => ({ id: p.id, httpUrl: `http://${p.host}:${p.httpPort}` }));
}

export function consensusExtension(): SafekeeperExtension & { peerSync(): PeerSync | undefined } {
  const stopping = new AbortController();
  let sync: PeerSync | undefined;
  let task: { done: Promise<void>; cancel: () => void } | undefined;
  return {
    name: "consensus",
    peerSync: () => sync,
    registerRoutes(app: FastifyInstance, sk: Safekeeper): void {
      registerConsensusRoutes(app, {
        lookup: (tenantId, timelineId) => sk.getTimeline(tenantId, timelineId),
        walSourceFor: (donor, tenantId, timelineId) => new HttpWalSource(donor, tenantId, timelineId),
        signal: stopping.signal,
      });
    },
    async start(sk: Safekeeper): Promise<void> {
      const peers = peerAddresses(sk);
      if (peers.length === 0) return;
      const s = new PeerSync({ selfId: sk.config.id, peers, timelines: () => sk.listTimelines(), log: sk.log.child({ component: "peer_sync" }) });
      sync = s;
      task = sk.tasks.spawn("peer_sync", { name: "peer_sync" }, (signal) => s.run(signal));
    },
    async stop(): Promise<void> {
      stopping.abort(new Error("safekeeper stopping"));
      task?.cancel();
      await task?.done;
    },
  };
}
