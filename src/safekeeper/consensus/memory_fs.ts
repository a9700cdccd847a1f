/**
 * MemoryFS — a DurableFS kept entirely in memory, for the deterministic
 * consensus simulation.
 *
 * Why: the simulation runs hundreds of seeds of 3–5 safekeepers, each with a
 * real ControlFile and WalStorage (1 MiB segments, zero-filled on creation).
 * On a real disk that is seconds of fsyncs per seed; in memory it is
 * microseconds, and every promise resolves in an order fixed by the code
 * alone, so a seed replays exactly.
 *
 * Semantics: every call takes effect immediately and is "durable" — power
 * loss is FaultyFS's job: wrap a MemoryFS in a FaultyFS, and after
 * `powerLoss()` open a new FaultyFS over the same MemoryFS. Paths are POSIX,
 * absolute or relative (normalized); errors carry Node's codes (ENOENT,
 * EEXIST, EISDIR, ENOTDIR, ENOTEMPTY) as FaultyFS and the storage expect.
 */
import { dirname, normalize, posix } from "node:path";
import type { DurableFile, DurableFS, OpenMode } from "../durable_fs.js";

interface MemFile {
  data: Uint8Array;
  size: number;
}

function fsError(code: string, op: string, path: string): Error {
  return Object.assign(new Error(`${code}: ${op} '${path}'`), { code });
}

export class MemoryFS implements DurableFS {
  private readonly files = new Map<string, MemFile>();
  private readonly dirs = new Set<string>(["/", "."]);

  /** An independent copy (the simulation opens a crashed node's disk without touching it). */
  clone(): MemoryFS {
    const c = new MemoryFS();
    for (const d of this.dirs) c.dirs.add(d);
    for (const [p, f] of this.files) c.files.set(p, { data: f.data.slice(0, f.size), size: f.size });
    return c;
  }

  /** Total bytes held (for tests that bound memory). */
  get bytesHeld(): number {
    let n = 0;
    for (const f of this.files.values()) n += f.data.length;
    return n;
  }

  async openFile(path: string, mode: OpenMode): Promise<DurableFile> {
    const p = norm(path);
    if (this.dirs.has(p)) throw fsError("EISDIR", "open", p);
    let f = this.files.get(p);
    if (mode === "create") {
      this.requireDir(dirname(p), "open", p);
      f = { data: new Uint8Array(0), size: 0 };
      this.files.set(p, f);
    } else if (f === undefined) {
      throw fsError("ENOENT", "open", p);
    }
    return new MemHandle(p, f, mode === "read");
  }

  async readFile(path: string): Promise<Uint8Array> {
    const p = norm(path);
    const f = this.files.get(p);
    if (f === undefined) throw fsError(this.dirs.has(p) ? "EISDIR" : "ENOENT", "read", p);
    return f.data.slice(0, f.size);
  }

  async rename(from: string, to: string): Promise<void> {
    const a = norm(from);
    const b = norm(to);
    this.requireDir(dirname(b), "rename", b);
    const f = this.files.get(a);
    if (f !== undefined) {
      if (this.dirs.has(b)) throw fsError("EISDIR", "rename", b);
      this.files.delete(a);
      this.files.set(b, f);
      return;
    }
    if (!this.dirs.has(a)) throw fsError("ENOENT", "rename", a);
    if (this.files.has(b)) throw fsError("ENOTDIR", "rename", b);
    if (this.dirs.has(b) && this.children(b).length > 0) throw fsError("ENOTEMPTY", "rename", b);
    // A directory: move it and everything under it.
    const prefix = a + "/";
    for (const d of [...this.dirs]) {
      if (d === a || d.startsWith(prefix)) {
        this.dirs.delete(d);
        this.dirs.add(b + d.slice(a.length));
      }
    }
    for (const [p, file] of [...this.files]) {
      if (p.startsWith(prefix)) {
        this.files.delete(p);
        this.files.set(b + p.slice(a.length), file);
      }
    }
  }

  async unlink(path: string): Promise<void> {
    const p = norm(path);
    if (!this.files.delete(p)) throw fsError(this.dirs.has(p) ? "EISDIR" : "ENOENT", "unlink", p);
  }

  async readdir(dir: string): Promise<string[]> {
    const d = norm(dir);
    if (!this.dirs.has(d)) throw fsError(this.files.has(d) ? "ENOTDIR" : "ENOENT", "scandir", d);
    return this.children(d);
  }

  async mkdir(dir: string): Promise<void> {
    let d = norm(dir);
    const missing: string[] = [];
    while (!this.dirs.has(d)) {
      if (this.files.has(d)) throw fsError("EEXIST", "mkdir", d);
      missing.push(d);
      const parent = dirname(d);
      if (parent === d) break;
      d = parent;
    }
    for (const m of missing) this.dirs.add(m);
  }

  async syncDir(dir: string): Promise<void> {
    this.requireDir(norm(dir), "fsync", dir);
  }

  private children(d: string): string[] {
    const out = new Set<string>();
    const prefix = d === "/" ? "/" : d + "/";
    for (const p of [...this.files.keys(), ...this.dirs]) {
      if (p !== d && p.startsWith(prefix)) {
        const rest = p.slice(prefix.length);
        if (rest.length > 0) out.add(rest.split("/")[0]!);
      }
    }
    return [...out];
  }

  private requireDir(d: string, op: string, path: string): void {
    if (!this.dirs.has(d)) throw fsError("ENOENT", op, path);
  }
}

function norm(path: string): string {
  const p = normalize(path).split("\\").join(posix.sep);
  return p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p;
}

class MemHandle implements DurableFile {
  private closed = false;
  constructor(
    readonly path: string,
    private readonly file: MemFile,
    private readonly readOnly: boolean,
  ) {}

  async write(data: Uint8Array, position: number): Promise<void> {
    this.check();
    if (this.readOnly) throw fsError("EBADF", "write", this.path);
    const end = position + data.length;
    if (end > this.file.data.length) {
      const grown = new Uint8Array(Math.max(end, this.file.data.length * 2));
      grown.set(this.file.data.subarray(0, this.file.size));
      this.file.data = grown;
    }
    this.file.data.set(data, position);
    if (end > this.file.size) this.file.size = end;
  }

  async read(into: Uint8Array, position: number): Promise<number> {
    this.check();
    const n = Math.max(0, Math.min(into.length, this.file.size - position));
    into.set(this.file.data.subarray(position, position + n));
    return n;
  }

  async sync(): Promise<void> {
    this.check();
  }

  async size(): Promise<number> {
    this.check();
    return this.file.size;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private check(): void {
    if (this.closed) throw fsError("EBADF", "use of closed file", this.path);
  }
}
