/**
 * The `pagestream` sub-protocol of the page service: its messages (both
 * directions, encode + decode, together as STYLE.md asks) and a client.
 *
 * A client connects with libpq to the pageserver's page service, sends the
 * simple query `pagestream <tenant_id> <timeline_id>`, receives
 * CopyBothResponse, and from then on sends one request per CopyData message
 * and receives one response per CopyData message, **in request order**.
 * Many requests may be in flight (pipelining); the server works on up to
 * MAX_PAGESTREAM_IN_FLIGHT at once. CopyDone from the client ends the stream.
 * An error answers only its request (the stream goes on); a malformed
 * message ends the connection with a FATAL ErrorResponse.
 *
 * Every request carries a request id (echoed back, so a client can check
 * the pairing) and the LSN it wants to read at: the server waits (bounded)
 * until it has ingested WAL up to that LSN, then answers with the state as
 * of that LSN. All integers are big-endian.
 *
 * Request  = tag u8, request_id u32, lsn u64, body
 *   0x01 exists   body = spc u32, db u32, rel u32, fork u8
 *   0x02 nblocks  body = spc u32, db u32, rel u32, fork u8
 *   0x03 getpage  body = spc u32, db u32, rel u32, fork u8, block u32
 *   0x04 dbsize   body = db u32            (every tablespace of the database)
 *   0x05 slru     body = kind u8 (0 clog, 1 multixact offsets, 2 members), segno u32
 *
 * Response = tag u8, request_id u32, body
 *   0x81 exists   body = u8 (0 or 1)
 *   0x82 nblocks  body = u32
 *   0x83 getpage  body = 8192 bytes
 *   0x84 dbsize   body = u64 bytes
 *   0x85 slru     body = u32 length, bytes (the segment file's content; pages * 8192)
 *   0xFF error    body = sqlstate (5 ASCII bytes), u16 length, UTF-8 message
 *
 * A nblocks or getpage request for a fork that does not exist is an error
 * (SQLSTATE 58P01-like "undefined_file" is not needed: we use the codes of
 * src/wire/sqlstate.ts); exists answers 0.
 */
import { StrataError, type ErrorCode } from "../lib/errors.js";
import { type Lsn } from "../lib/lsn.js";
import { BLCKSZ } from "../formats/page.js";
import { serializeFrontend } from "../wire/messages.js";
import { PgClient, type ConnectOptions } from "../wire/client.js";
import type { TenantId, TimelineId } from "../lib/id.js";
import type { RelTag } from "./key.js";
import { SlruKind } from "./key.js";

/** Requests a server works on concurrently per connection (bounded memory and redo queue share). */
export const MAX_PAGESTREAM_IN_FLIGHT = 64;
/** Largest response: an SLRU segment of 32 pages plus headers. */
export const MAX_PAGESTREAM_MESSAGE_BYTES = 32 * BLCKSZ + 64;

export const REQ = { exists: 0x01, nblocks: 0x02, getpage: 0x03, dbsize: 0x04, slru: 0x05 } as const;
const RESP_OK = 0x80;
const RESP_ERROR = 0xff;

export type PagestreamRequest =
  | { kind: "exists"; id: number; lsn: Lsn; rel: RelTag }
  | { kind: "nblocks"; id: number; lsn: Lsn; rel: RelTag }
  | { kind: "getpage"; id: number; lsn: Lsn; rel: RelTag; block: number }
  | { kind: "dbsize"; id: number; lsn: Lsn; dbOid: number }
  | { kind: "slru"; id: number; lsn: Lsn; slru: SlruKind; segNo: number };

export type PagestreamResponse =
  | { kind: "exists"; id: number; exists: boolean }
  | { kind: "nblocks"; id: number; blocks: number }
  | { kind: "getpage"; id: number; page: Uint8Array }
  | { kind: "dbsize"; id: number; bytes: bigint }
  | { kind: "slru"; id: number; data: Uint8Array }
  | { kind: "error"; id: number; sqlstate: string; message: string };

const HEADER_BYTES = 13;
const REL_BYTES = 13;

function malformed(why: string, offset: number): StrataError {
  return new StrataError("protocol_violation", `Malformed pagestream message: ${why} (at offset ${offset})`);
}

export function encodeRequest(r: PagestreamRequest): Buffer {
  const bodyLen = r.kind === "getpage" ? REL_BYTES + 4 : r.kind === "dbsize" ? 4 : r.kind === "slru" ? 5 : REL_BYTES;
  const b = Buffer.alloc(HEADER_BYTES + bodyLen);
  b.writeUInt8(REQ[r.kind], 0);
  b.writeUInt32BE(r.id >>> 0, 1);
  b.writeBigUInt64BE(r.lsn, 5);
  let o = HEADER_BYTES;
  if (r.kind === "exists" || r.kind === "nblocks" || r.kind === "getpage") {
    b.writeUInt32BE(r.rel.spcOid, o);
    b.writeUInt32BE(r.rel.dbOid, o + 4);
    b.writeUInt32BE(r.rel.relNumber, o + 8);
    b.writeUInt8(r.rel.fork, o + 12);
    o += REL_BYTES;
    if (r.kind === "getpage") b.writeUInt32BE(r.block, o);
  } else if (r.kind === "dbsize") {
    b.writeUInt32BE(r.dbOid, o);
  } else {
    b.writeUInt8(r.slru, o);
    b.writeUInt32BE(r.segNo, o + 1);
  }
  return b;
}

/** Parses a request from the network; any deviation is protocol_violation. */
export function decodeRequest(b: Buffer): PagestreamRequest {
  if (b.length < HEADER_BYTES) throw malformed(`request of ${b.length} bytes is shorter than the ${HEADER_BYTES}-byte header`, 0);
  const tag = b.readUInt8(0);
  const id = b.readUInt32BE(1);
  const lsn = b.readBigUInt64BE(5) as Lsn;
  const body = b.length - HEADER_BYTES;
  const want = (n: number) => {
    if (body !== n) throw malformed(`request tag 0x${tag.toString(16)} has a ${body}-byte body, expected ${n}`, HEADER_BYTES);
  };
  const rel = (): RelTag => {
    const fork = b.readUInt8(HEADER_BYTES + 12);
    if (fork > 3) throw malformed(`fork ${fork}`, HEADER_BYTES + 12);
    return { spcOid: b.readUInt32BE(HEADER_BYTES), dbOid: b.readUInt32BE(HEADER_BYTES + 4), relNumber: b.readUInt32BE(HEADER_BYTES + 8), fork };
  };
  switch (tag) {
    case REQ.exists:
      want(REL_BYTES);
      return { kind: "exists", id, lsn, rel: rel() };
    case REQ.nblocks:
      want(REL_BYTES);
      return { kind: "nblocks", id, lsn, rel: rel() };
    case REQ.getpage:
      want(REL_BYTES + 4);
      return { kind: "getpage", id, lsn, rel: rel(), block: b.readUInt32BE(HEADER_BYTES + REL_BYTES) };
    case REQ.dbsize:
      want(4);
      return { kind: "dbsize", id, lsn, dbOid: b.readUInt32BE(HEADER_BYTES) };
    case REQ.slru: {
      want(5);
      const kind = b.readUInt8(HEADER_BYTES);
      if (kind > SlruKind.MultiXactMembers) throw malformed(`SLRU kind ${kind}`, HEADER_BYTES);
      return { kind: "slru", id, lsn, slru: kind as SlruKind, segNo: b.readUInt32BE(HEADER_BYTES + 1) };
    }
    default:
      throw malformed(`unknown request tag 0x${tag.toString(16)}`, 0);
  }
}

export function encodeResponse(r: PagestreamResponse): Buffer {
  const head = (tag: number, bodyLen: number) => {
    const b = Buffer.alloc(5 + bodyLen);
    b.writeUInt8(tag, 0);
    b.writeUInt32BE(r.id >>> 0, 1);
    return b;
  };
  switch (r.kind) {
    case "exists": {
      const b = head(RESP_OK | REQ.exists, 1);
      b.writeUInt8(r.exists ? 1 : 0, 5);
      return b;
    }
    case "nblocks": {
      const b = head(RESP_OK | REQ.nblocks, 4);
      b.writeUInt32BE(r.blocks, 5);
      return b;
    }
    case "getpage": {
      const b = head(RESP_OK | REQ.getpage, BLCKSZ);
      b.set(r.page, 5);
      return b;
    }
    case "dbsize": {
      const b = head(RESP_OK | REQ.dbsize, 8);
      b.writeBigUInt64BE(r.bytes, 5);
      return b;
    }
    case "slru": {
      const b = head(RESP_OK | REQ.slru, 4 + r.data.length);
      b.writeUInt32BE(r.data.length, 5);
      b.set(r.data, 9);
      return b;
    }
    case "error": {
      const msg = Buffer.from(r.message.slice(0, 4000), "utf8");
      const b = head(RESP_ERROR, 5 + 2 + msg.length);
      b.write(r.sqlstate.padEnd(5, "0").slice(0, 5), 5, "ascii");
      b.writeUInt16BE(msg.length, 10);
      msg.copy(b, 12);
      return b;
    }
  }
}

export function decodeResponse(b: Buffer): PagestreamResponse {
  if (b.length < 5) throw malformed(`response of ${b.length} bytes is shorter than 5`, 0);
  const tag = b.readUInt8(0);
  const id = b.readUInt32BE(1);
  const body = b.length - 5;
  const want = (n: number) => {
    if (body !== n) throw malformed(`response tag 0x${tag.toString(16)} has a ${body}-byte body, expected ${n}`, 5);
  };
  switch (tag) {
    case RESP_OK | REQ.exists:
      want(1);
      return { kind: "exists", id, exists: b.readUInt8(5) !== 0 };
    case RESP_OK | REQ.nblocks:
      want(4);
      return { kind: "nblocks", id, blocks: b.readUInt32BE(5) };
    case RESP_OK | REQ.getpage:
      want(BLCKSZ);
      return { kind: "getpage", id, page: new Uint8Array(b.subarray(5)) };
    case RESP_OK | REQ.dbsize:
      want(8);
      return { kind: "dbsize", id, bytes: b.readBigUInt64BE(5) };
    case RESP_OK | REQ.slru: {
      if (body < 4) throw malformed("SLRU response without its length", 5);
      const n = b.readUInt32BE(5);
      want(4 + n);
      return { kind: "slru", id, data: new Uint8Array(b.subarray(9)) };
    }
    case RESP_ERROR: {
      if (body < 7) throw malformed("error response too short", 5);
      const n = b.readUInt16BE(10);
      want(7 + n);
      return { kind: "error", id, sqlstate: b.toString("ascii", 5, 10), message: b.toString("utf8", 12, 12 + n) };
    }
    default:
      throw malformed(`unknown response tag 0x${tag.toString(16)}`, 0);
  }
}

/** An error response from the page service for one request. */
export class PagestreamError extends StrataError {
  constructor(readonly sqlstate: string, message: string) {
    super(CODE_BY_SQLSTATE[sqlstate] ?? "internal", message);
  }
}

/** Inverse of src/wire/sqlstate.ts's table, so clients see the server's error code. */
const CODE_BY_SQLSTATE: Record<string, ErrorCode> = {
  "08P01": "protocol_violation", "22023": "invalid_argument", "0A000": "unsupported", "42704": "not_found",
  "57014": "timeout", "58030": "io_error", "XX001": "corrupt_data", "53000": "unavailable", "XX000": "internal",
};

type Pending = { resolve: (r: PagestreamResponse) => void; reject: (e: Error) => void; id: number };

type RequestBody<K extends PagestreamRequest["kind"]> = Omit<Extract<PagestreamRequest, { kind: K }>, "kind" | "id">;

/**
 * A pagestream client (tests, benchmarks, tools): requests may be issued
 * concurrently; responses are matched in order and checked against the id.
 */
export class PagestreamClient {
  private nextId = 1;
  private readonly pending: Pending[] = [];
  private failure: Error | undefined;
  private reading = false;

  private constructor(private readonly client: PgClient) {}

  static async connect(opts: Omit<ConnectOptions, "replication"> & { tenantId: TenantId; timelineId: TimelineId }): Promise<PagestreamClient> {
    const { tenantId, timelineId, ...conn } = opts;
    const client = await PgClient.connect({ ...conn, maxMessageBytes: MAX_PAGESTREAM_MESSAGE_BYTES + 1024 });
    client._write(serializeFrontend({ kind: "Query", sql: `pagestream ${tenantId} ${timelineId}` }));
    for (;;) {
      const m = await client._read();
      if (m.kind === "CopyBothResponse") break;
      if (m.kind === "ErrorResponse") {
        await client.close().catch(() => undefined);
        throw new StrataError("unavailable", `pagestream refused: ${m.fields.message ?? "error"}`);
      }
      if (m.kind === "NoticeResponse" || m.kind === "ParameterStatus") continue;
      await client.close().catch(() => undefined);
      throw new StrataError("protocol_violation", `pagestream: unexpected ${m.kind} before CopyBothResponse`);
    }
    return new PagestreamClient(client);
  }

  private async readLoop(): Promise<void> {
    this.reading = true;
    try {
      while (this.pending.length > 0) {
        const m = await this.client._read();
        if (m.kind === "CopyData") {
          const r = decodeResponse(m.data);
          const p = this.pending.shift()!;
          if (r.id !== p.id) throw new StrataError("protocol_violation", `pagestream: response id ${r.id}, expected ${p.id}`);
          p.resolve(r);
        } else if (m.kind === "ErrorResponse") {
          throw new StrataError("unavailable", `page service: ${m.fields.message ?? "error"}`);
        } else {
          throw new StrataError("protocol_violation", `pagestream: unexpected ${m.kind}`);
        }
      }
    } catch (e) {
      this.failure = e as Error;
      for (const p of this.pending.splice(0)) p.reject(e as Error);
    } finally {
      this.reading = false;
    }
  }

  /** Sends one request and resolves with its (non-error) response; error responses reject with PagestreamError. */
  async request<K extends PagestreamRequest["kind"]>(kind: K, body: RequestBody<K>): Promise<Extract<PagestreamResponse, { kind: K }>> {
    if (this.failure) throw this.failure;
    const id = this.nextId++ >>> 0;
    const req = { kind, id, ...body } as unknown as PagestreamRequest;
    const p = new Promise<PagestreamResponse>((resolve, reject) => this.pending.push({ resolve, reject, id }));
    this.client._write(serializeFrontend({ kind: "CopyData", data: encodeRequest(req) }));
    if (!this.reading) void this.readLoop();
    const r = await p;
    if (r.kind === "error") throw new PagestreamError(r.sqlstate, r.message);
    return r as Extract<PagestreamResponse, { kind: K }>;
  }

  async getPage(rel: RelTag, block: number, lsn: Lsn): Promise<Uint8Array> {
    return (await this.request("getpage", { rel, block, lsn })).page;
  }
  async nblocks(rel: RelTag, lsn: Lsn): Promise<number> {
    return (await this.request("nblocks", { rel, lsn })).blocks;
  }
  async exists(rel: RelTag, lsn: Lsn): Promise<boolean> {
    return (await this.request("exists", { rel, lsn })).exists;
  }
  async dbSize(dbOid: number, lsn: Lsn): Promise<bigint> {
    return (await this.request("dbsize", { dbOid, lsn })).bytes;
  }
  async slruSegment(slru: SlruKind, segNo: number, lsn: Lsn): Promise<Uint8Array> {
    return (await this.request("slru", { slru, segNo, lsn })).data;
  }

  async close(): Promise<void> {
    try {
      this.client._write(serializeFrontend({ kind: "CopyDone" }));
    } catch {
      // already gone
    }
    await this.client.close().catch(() => undefined);
  }
}
