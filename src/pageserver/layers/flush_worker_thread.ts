/**
 * The flush worker thread's entry point (flush_worker.ts is the main-thread
 * side and explains the protocol): runs `writeFrozenLayer` for each flush
 * request and answers with the written layer or the error's code and
 * message. A "cancel" request aborts that flush's signal; the flush stops at
 * its next key group and removes its partial file.
 *
 * Requests may overlap (two timelines flushing at once): each runs as its own
 * async task here, interleaved at their awaits, as they would be on the main
 * thread.
 */
import { parentPort } from "node:worker_threads";
import { StrataError } from "../../lib/errors.js";
import type { FlushReply, FlushRequest } from "./flush_worker.js";
import { writeFrozenLayer } from "./frozen_layer_flush.js";

const port = parentPort;
if (port === null) throw new Error("flush_worker_thread.js must run as a worker thread");

const running = new Map<number, AbortController>();

port.on("message", (req: FlushRequest) => {
  if (req.type === "cancel") {
    running.get(req.id)?.abort(new StrataError("cancelled", "flush cancelled by its caller"));
    return;
  }
  const ac = new AbortController();
  if (req.aborted) ac.abort(new StrataError("cancelled", "flush cancelled by its caller"));
  running.set(req.id, ac);
  writeFrozenLayer(req.snap, req.dir, { ...req.opts, signal: ac.signal }).then(
    (written) => {
      running.delete(req.id);
      port.postMessage({ id: req.id, ok: true, written } satisfies FlushReply);
    },
    (e: unknown) => {
      running.delete(req.id);
      const reply: FlushReply = e instanceof StrataError
        ? { id: req.id, ok: false, code: e.code, message: e.message }
        : { id: req.id, ok: false, code: "internal", message: `Flush worker: ${(e as Error).stack ?? String(e)}` };
      port.postMessage(reply);
    },
  );
});
