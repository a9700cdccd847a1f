/*
 * strata-wal-receiver — the safekeeper's commit loop for one compute
 * connection, outside the Node event loop.
 *
 * Why it exists: a compute's COMMIT waits for the safekeeper to read the
 * commit's WAL from the replication connection, write it, fdatasync it and
 * send a standby status update. Done in JavaScript, each such cycle costs
 * ~50 us of user CPU in Node's event-loop and callback machinery alone
 * (measured with a minimal Node loop doing only those four system calls),
 * against ~5 us for the same loop in C; on a small machine that CPU is taken
 * from the compute. So the loop runs here, as pg_receivewal's does, and the
 * safekeeper (Node) keeps everything else: the connection handshake, terms
 * and fencing, the control file, segment files' life cycle (creation,
 * pre-allocation, completion, truncation), record boundaries, commit_lsn,
 * WAL service and metrics. See src/safekeeper/native_receiver.ts.
 *
 * What it owns, and nothing more: the byte range of ONE open segment file
 * (`<segment>.partial`, created full-size by the safekeeper) from the write
 * LSN to the segment's end. It never creates, renames or truncates files.
 *
 * Inputs:
 *   fd 3     the compute's replication socket, already in CopyBoth mode
 *            (after START_REPLICATION); the safekeeper stopped reading it.
 *   stdin    commands from the safekeeper (binary, little-endian):
 *              first, exactly --initial-bytes bytes: what the safekeeper
 *                                   had read from the socket but not
 *                                   consumed (read before the socket is)
 *              'N' u64 lsn          send a progress record as soon as the
 *                                   flush LSN is past lsn
 *              'P'                  pause: finish the current cycle (write,
 *                                   fdatasync, status update), report
 *                                   'z', stop reading the socket
 *              'R' u32 n, n bytes path, u64 segment start
 *                                   resume (n = 0: same segment file)
 *              'S'                  stop: finish the current cycle, report
 *                                   'x' (stopped) and exit
 *            End of file on stdin (the safekeeper is gone): exit at once.
 *   argv     see usage().
 * Outputs (stdout, binary, little-endian), each with a progress block:
 *   'p' progress   'z' u8 reason (1 requested, 2 segment full) paused
 *   'x' u8 reason, u32 n, n bytes: the stream ended, then exit. Reasons:
 *       1 server sent CopyDone, 2 server sent ErrorResponse (the bytes are
 *       the whole message), 3 connection closed or failed, 4 protocol
 *       violation, 5 I/O error on the segment file, 6 stopped on request.
 *   progress block: u64 write LSN, u64 flush LSN, u64 fsyncs, u64 bytes
 *       written, f64 fsync seconds (sum), u64 x (buckets + 1) fsync counts
 *       per histogram bucket (not cumulative) — all totals since start.
 *   stderr   nothing in normal operation; usage errors.
 *
 * Invariants (the safekeeper's rules, kept here):
 * * The flush LSN reported anywhere (status update, progress) is covered by
 *   a completed fdatasync of the segment file.
 * * XLogData must continue exactly at the write LSN; a gap or overlap is a
 *   protocol violation and ends the stream.
 * * Writes stay inside [write LSN, segment end): WAL past the segment's end
 *   waits, in this process, until the safekeeper completed the segment and
 *   resumed us on the next one.
 * * Group commit as pg_receivewal: read until the socket has nothing more
 *   (or the read buffer is full), write everything, make it durable once,
 *   one status update.
 * * Durable writes: the segment is also opened O_DIRECT | O_DSYNC, and each
 *   batch is written from a 4 KiB-aligned copy of the file's tail, whole
 *   blocks from the block holding the write LSN (the bytes past it are the
 *   zeros the file already holds): one system call puts the batch on
 *   stable storage. Measured on the CI machine: 148-151 us and 36-44 us of
 *   system CPU per cycle, against 166-168 us and 55 us for pwrite +
 *   fdatasync; and in bench/safekeeper.ts 111-129 us of CPU per
 *   transaction against 123-158. Where the file system refuses O_DIRECT
 *   (tmpfs), it writes through the page cache and fdatasyncs, as before.
 *   The kernel drops cached pages a direct write covers, so the
 *   safekeeper's buffered reads of the file see the new bytes.
 * * The process dies with its parent (PR_SET_PDEATHSIG): when the safekeeper
 *   is killed, nothing acknowledges WAL on its behalf.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SOCK_FD 3
/* Read buffer; also bounds one write + fdatasync batch (like MAX_WRITE_BATCH_BYTES). */
#define IN_CAP (4u << 20)
/* Largest backend message accepted (a walsender sends at most 128 KiB of WAL per message). */
#define MAX_MESSAGE_BYTES (1u << 20)
#define MAX_IOV 256
#define MAX_BUCKETS 32
#define CMD_CAP 8192
/* Seconds between 1970-01-01 and 2000-01-01 (PostgreSQL's timestamp epoch). */
#define PG_EPOCH_OFFSET_S 946684800LL

enum { END_COPY_DONE = 1, END_SERVER_ERROR = 2, END_CONNECTION = 3, END_PROTOCOL = 4, END_IO = 5, END_STOPPED = 6 };
enum { PAUSE_REQUESTED = 1, PAUSE_SEGMENT_FULL = 2 };

static uint8_t inbuf[IN_CAP];
static size_t in_start, in_end; /* unparsed bytes are inbuf[in_start, in_end) */
/* The XLogData message at in_start was partly written before a segment end: bytes of its payload done. */
static size_t held_payload_done;
static int held; /* in_start is such a message */

static uint8_t outbuf[64 * 1024]; /* status updates not yet taken by the socket */
static size_t out_len;

static uint8_t cmdbuf[CMD_CAP];
static size_t cmd_len;

static int seg_fd = -1;
/* Direct writes (see the header): alignment of buffer, offset and length. */
#define DIO_BLOCK 4096
/* The segment opened O_DIRECT | O_DSYNC, or -1: writes through the page cache and fdatasync. */
static int dio_fd = -1;
/* Aligned copy of the file from segment offset dio_start (a block start) to the write LSN; zeros after. */
static uint8_t *dio_buf;
static size_t dio_cap;
static uint64_t dio_start;
static size_t dio_len;
/* The flush LSN the last status update reported. */
static uint64_t acked_lsn;
static char seg_path[4096];
static uint64_t seg_start, seg_size;
static uint64_t write_lsn, flush_lsn;
static uint64_t fsyncs, bytes_written;
static double fsync_seconds;
static double bucket_bounds[MAX_BUCKETS];
static int nbuckets;
static uint64_t bucket_counts[MAX_BUCKETS + 1];
static long status_interval_ms = 10000, heartbeat_ms = 100;
static uint64_t notify_after;
static int notify_armed;
static uint64_t last_progress_flush = UINT64_MAX;
static double last_progress_at, last_status_at;
static int paused, pause_requested, stop_requested, reply_requested;
/* The compute closed the connection: the stream ends once what was read before is written. */
static int sock_eof;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void put_u64le(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_u64le(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}
static uint32_t get_u32le(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64be(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}
static uint32_t get_u32be(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static void put_u64be(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* Writes all of buf to the safekeeper (blocking pipe). The safekeeper gone: exit. */
static void emit(const uint8_t *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(STDOUT_FILENO, buf, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      _exit(3);
    }
    buf += w;
    n -= (size_t)w;
  }
}

/* Appends the progress block to p; returns its length. */
static size_t progress_block(uint8_t *p) {
  size_t o = 0;
  put_u64le(p + o, write_lsn), o += 8;
  put_u64le(p + o, flush_lsn), o += 8;
  put_u64le(p + o, fsyncs), o += 8;
  put_u64le(p + o, bytes_written), o += 8;
  uint64_t bits;
  memcpy(&bits, &fsync_seconds, 8);
  put_u64le(p + o, bits), o += 8;
  for (int i = 0; i <= nbuckets; i++) put_u64le(p + o, bucket_counts[i]), o += 8;
  return o;
}

static void emit_progress(void) {
  uint8_t msg[1 + 40 + 8 * (MAX_BUCKETS + 1)];
  msg[0] = 'p';
  size_t n = 1 + progress_block(msg + 1);
  emit(msg, n);
  last_progress_flush = flush_lsn;
  last_progress_at = now_s();
}

static void emit_paused(int reason) {
  uint8_t msg[2 + 40 + 8 * (MAX_BUCKETS + 1)];
  msg[0] = 'z';
  msg[1] = (uint8_t)reason;
  size_t n = 2 + progress_block(msg + 2);
  emit(msg, n);
  last_progress_flush = flush_lsn;
  last_progress_at = now_s();
}

static void flush_segment(void);
static void write_pending(void);
static int niov;

/*
 * Reports the end of the stream and exits. Unless the segment file failed,
 * the WAL received before the end (queued from the same read, or written
 * but not yet synced) is written and made durable first, so the final
 * report covers everything valid the compute sent.
 */
static void end_stream(int reason, const uint8_t *detail, size_t detail_len, int status) {
  if (reason != END_IO && niov > 0) write_pending();
  if (reason != END_IO && write_lsn > flush_lsn) flush_segment();
  uint8_t head[2 + 40 + 8 * (MAX_BUCKETS + 1) + 4];
  head[0] = 'x';
  head[1] = (uint8_t)reason;
  size_t n = 2 + progress_block(head + 2);
  head[n++] = (uint8_t)detail_len;
  head[n++] = (uint8_t)(detail_len >> 8);
  head[n++] = (uint8_t)(detail_len >> 16);
  head[n++] = (uint8_t)(detail_len >> 24);
  emit(head, n);
  if (detail_len > 0) emit(detail, detail_len);
  _exit(status);
}

static void end_text(int reason, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void end_text(int reason, int status, const char *fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof text) n = sizeof text - 1;
  end_stream(reason, (const uint8_t *)text, (size_t)n, status);
}

/* Counts one durable write (an fdatasync, or a direct O_DSYNC write) that took `dt` seconds. */
static void record_flush(double dt) {
  fsyncs++;
  fsync_seconds += dt;
  int b = 0;
  while (b < nbuckets && dt > bucket_bounds[b]) b++;
  bucket_counts[b]++;
}

static void flush_segment(void) {
  double t0 = now_s();
  if (fdatasync(seg_fd) != 0) {
    int e = errno;
    /* After a failed fsync the kernel may have dropped the dirty pages: nothing past flush_lsn is durable. */
    end_text(END_IO, 1, "fdatasync %s: %s", seg_path, strerror(e));
  }
  record_flush(now_s() - t0);
  flush_lsn = write_lsn;
}

/* Queues bytes for the socket and writes as much as it takes now. */
static void send_bytes(const uint8_t *p, size_t n) {
  if (out_len + n > sizeof outbuf) end_text(END_CONNECTION, 1, "the compute does not read its replication connection (%zu bytes of status updates queued)", out_len);
  if (n > 0) memcpy(outbuf + out_len, p, n);
  out_len += n;
  while (out_len > 0) {
    ssize_t w = write(SOCK_FD, outbuf, out_len);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      end_text(END_CONNECTION, 1, "writing to the compute: %s", strerror(errno));
    }
    memmove(outbuf, outbuf + w, out_len - (size_t)w);
    out_len -= (size_t)w;
  }
}

/* Standby status update: CopyData('r', write, flush, apply, clock, reply requested). */
static void send_status(void) {
  uint8_t m[39];
  m[0] = 'd';
  m[1] = 0, m[2] = 0, m[3] = 0, m[4] = 38;
  m[5] = 'r';
  put_u64be(m + 6, write_lsn);
  put_u64be(m + 14, flush_lsn);
  put_u64be(m + 22, flush_lsn);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t us = ((int64_t)ts.tv_sec - PG_EPOCH_OFFSET_S) * 1000000 + ts.tv_nsec / 1000;
  put_u64be(m + 30, (uint64_t)us);
  m[38] = 0;
  send_bytes(m, sizeof m);
  last_status_at = now_s();
  reply_requested = 0;
}

static void open_segment(const char *path, uint64_t start) {
  if (seg_fd >= 0) close(seg_fd);
  if (dio_fd >= 0) close(dio_fd);
  if (strlen(path) >= sizeof seg_path) end_text(END_IO, 1, "segment path too long");
  strcpy(seg_path, path);
  seg_start = start;
  seg_fd = open(seg_path, O_RDWR | O_CLOEXEC);
  if (seg_fd < 0) end_text(END_IO, 1, "open %s: %s", seg_path, strerror(errno));
  if (write_lsn < seg_start || write_lsn >= seg_start + seg_size) {
    end_text(END_IO, 1, "write LSN %X/%X is outside segment %s", (unsigned)(write_lsn >> 32), (unsigned)write_lsn, seg_path);
  }
  dio_fd = open(seg_path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
  if (dio_fd >= 0) {
    if (dio_buf == NULL) {
      dio_cap = IN_CAP + 2 * DIO_BLOCK;
      if (posix_memalign((void **)&dio_buf, DIO_BLOCK, dio_cap) != 0) end_text(END_IO, 1, "out of memory");
    }
    memset(dio_buf, 0, dio_cap);
    uint64_t off = write_lsn - seg_start;
    dio_start = off & ~(uint64_t)(DIO_BLOCK - 1);
    dio_len = (size_t)(off - dio_start);
    size_t got = 0;
    while (got < dio_len) {
      ssize_t r = pread(seg_fd, dio_buf + got, dio_len - got, (off_t)(dio_start + got));
      if (r <= 0) end_text(END_IO, 1, "read %s: %s", seg_path, r == 0 ? "short file" : strerror(errno));
      got += (size_t)r;
    }
  }
}

static struct iovec iov[MAX_IOV];
static uint64_t iov_start, iov_bytes;

/* write_pending with dio_fd: copies the batch behind the tail block and writes whole blocks, durably. */
static void write_direct(void) {
  for (int i = 0; i < niov; i++) {
    memcpy(dio_buf + dio_len, iov[i].iov_base, iov[i].iov_len);
    dio_len += iov[i].iov_len;
  }
  size_t wlen = (dio_len + DIO_BLOCK - 1) & ~(size_t)(DIO_BLOCK - 1);
  double t0 = now_s();
  size_t done = 0;
  while (done < wlen) {
    ssize_t w = pwrite(dio_fd, dio_buf + done, wlen - done, (off_t)(dio_start + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      end_text(END_IO, 1, "write %zu bytes at offset %llu of %s: %s", wlen - done, (unsigned long long)(dio_start + done), seg_path, strerror(errno));
    }
    if (w == 0 || (size_t)w % DIO_BLOCK != 0) end_text(END_IO, 1, "direct write to %s wrote %zd bytes", seg_path, w);
    done += (size_t)w;
  }
  record_flush(now_s() - t0);
  bytes_written += iov_bytes;
  write_lsn = iov_start + iov_bytes;
  flush_lsn = write_lsn;
  size_t tail = dio_len & (DIO_BLOCK - 1);
  size_t full = dio_len - tail;
  if (full > 0) {
    memmove(dio_buf, dio_buf + full, tail);
    memset(dio_buf + tail, 0, wlen - tail);
    dio_start += full;
    dio_len = tail;
  }
  niov = 0;
  iov_bytes = 0;
}

static void write_pending(void) {
  if (dio_fd >= 0) {
    write_direct();
    return;
  }
  size_t done = 0;
  while (done < iov_bytes) {
    /* Skip the iovecs (or parts) already written. */
    struct iovec v[MAX_IOV];
    int nv = 0;
    size_t skip = done;
    for (int i = 0; i < niov; i++) {
      if (skip >= iov[i].iov_len) {
        skip -= iov[i].iov_len;
        continue;
      }
      v[nv].iov_base = (uint8_t *)iov[i].iov_base + skip;
      v[nv].iov_len = iov[i].iov_len - skip;
      skip = 0;
      nv++;
    }
    ssize_t w = pwritev(seg_fd, v, nv, (off_t)(iov_start - seg_start + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      end_text(END_IO, 1, "write %llu bytes at offset %llu of %s: %s", (unsigned long long)(iov_bytes - done),
               (unsigned long long)(iov_start - seg_start + done), seg_path, strerror(errno));
    }
    if (w == 0) end_text(END_IO, 1, "write to %s wrote nothing", seg_path);
    done += (size_t)w;
  }
  bytes_written += iov_bytes;
  write_lsn = iov_start + iov_bytes;
  niov = 0;
  iov_bytes = 0;
}

static void add_payload(const uint8_t *p, size_t n) {
  if (n == 0) return;
  if (niov == MAX_IOV) write_pending();
  if (niov == 0) iov_start = write_lsn;
  iov[niov].iov_base = (void *)p;
  iov[niov].iov_len = n;
  niov++;
  iov_bytes += n;
  /* write_lsn advances when written; the expected next LSN is iov_start + iov_bytes. */
}

static uint64_t expected_lsn(void) {
  return niov > 0 ? iov_start + iov_bytes : write_lsn;
}

/*
 * Parses whole messages from the read buffer and queues their WAL for
 * writing. Returns 1 when it stopped at a segment end (the message at
 * in_start is held), else 0.
 */
static int process_input(void) {
  while (in_end - in_start >= 5) {
    const uint8_t *m = inbuf + in_start;
    uint32_t len = get_u32be(m + 1);
    if (len < 4 || len > MAX_MESSAGE_BYTES) end_text(END_PROTOCOL, 1, "message type 0x%02x with length %u from the compute", m[0], len);
    if (in_end - in_start < 1 + (size_t)len) break;
    const uint8_t *body = m + 5;
    size_t blen = len - 4;
    if (m[0] == 'd') {
      if (blen < 1) end_text(END_PROTOCOL, 1, "empty CopyData from the compute");
      if (body[0] == 'w') {
        if (blen < 25) end_text(END_PROTOCOL, 1, "XLogData of %zu bytes is shorter than its header", blen);
        uint64_t start = get_u64be(body + 1);
        const uint8_t *data = body + 25;
        size_t dlen = blen - 25;
        size_t from = held ? held_payload_done : 0;
        if (!held && start != expected_lsn()) {
          end_text(END_PROTOCOL, 1, "compute sent WAL at %X/%X, expected %X/%X", (unsigned)(start >> 32), (unsigned)start,
                   (unsigned)(expected_lsn() >> 32), (unsigned)expected_lsn());
        }
        uint64_t at = start + from;
        uint64_t seg_end = seg_start + seg_size;
        size_t room = (size_t)(seg_end - at);
        if (dlen - from > room) {
          add_payload(data + from, room);
          held = 1;
          held_payload_done = from + room;
          return 1;
        }
        add_payload(data + from, dlen - from);
        held = 0;
        held_payload_done = 0;
        if (at + (dlen - from) == seg_end) {
          in_start += 1 + len;
          return 1;
        }
      } else if (body[0] == 'k') {
        if (blen < 18) end_text(END_PROTOCOL, 1, "keepalive of %zu bytes", blen);
        if (body[17]) reply_requested = 1;
      } else {
        end_text(END_PROTOCOL, 1, "CopyData of kind 0x%02x from the compute", body[0]);
      }
    } else if (m[0] == 'E') {
      if (niov > 0) write_pending();
      end_stream(END_SERVER_ERROR, m, 1 + (size_t)len, 0);
    } else if (m[0] == 'c') {
      if (niov > 0) write_pending();
      end_text(END_COPY_DONE, 0, "the compute ended the replication stream at %X/%X", (unsigned)(write_lsn >> 32), (unsigned)write_lsn);
    } else if (m[0] == 'N' || m[0] == 'S') {
      /* NoticeResponse, ParameterStatus: nothing to do. */
    } else {
      end_text(END_PROTOCOL, 1, "unexpected message type 0x%02x during replication", m[0]);
    }
    in_start += 1 + len;
  }
  return 0;
}

/* Reads the socket until it has nothing more or the buffer is full. Returns bytes read. */
static size_t read_socket(void) {
  if (in_start > 0 && (in_start == in_end || in_start > IN_CAP / 2)) {
    memmove(inbuf, inbuf + in_start, in_end - in_start);
    in_end -= in_start;
    in_start = 0;
  }
  size_t total = 0;
  while (in_end < IN_CAP) {
    ssize_t r = read(SOCK_FD, inbuf + in_end, IN_CAP - in_end);
    if (r > 0) {
      in_end += (size_t)r;
      total += (size_t)r;
      continue;
    }
    if (r == 0) {
      sock_eof = 1;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    end_text(END_CONNECTION, 1, "reading from the compute: %s", strerror(errno));
  }
  return total;
}

static void handle_commands(void) {
  for (;;) {
    ssize_t r = read(STDIN_FILENO, cmdbuf + cmd_len, CMD_CAP - cmd_len);
    if (r > 0) {
      cmd_len += (size_t)r;
      continue;
    }
    if (r == 0) _exit(0); /* the safekeeper closed our stdin: it is gone or done with us */
    if (errno == EINTR) continue;
    break;
  }
  size_t o = 0;
  while (o < cmd_len) {
    uint8_t c = cmdbuf[o];
    size_t avail = cmd_len - o;
    if (c == 'P') {
      pause_requested = 1;
      o += 1;
    } else if (c == 'S') {
      stop_requested = 1;
      o += 1;
    } else if (c == 'N') {
      if (avail < 9) break;
      notify_after = get_u64le(cmdbuf + o + 1);
      notify_armed = 1;
      o += 9;
    } else if (c == 'R') {
      if (avail < 5) break;
      uint32_t n = get_u32le(cmdbuf + o + 1);
      size_t need = 5 + (size_t)n + 8;
      if (need > CMD_CAP) end_text(END_PROTOCOL, 1, "command of %zu bytes from the safekeeper", need);
      if (avail < need) break;
      if (n > 0) {
        char path[4096];
        if (n >= sizeof path) end_text(END_PROTOCOL, 1, "segment path too long");
        memcpy(path, cmdbuf + o + 5, n);
        path[n] = 0;
        open_segment(path, get_u64le(cmdbuf + o + 5 + n));
      }
      paused = 0;
      pause_requested = 0;
      o += need;
    } else {
      end_text(END_PROTOCOL, 1, "unknown command 0x%02x from the safekeeper", c);
    }
  }
  memmove(cmdbuf, cmdbuf + o, cmd_len - o);
  cmd_len -= o;
}

static void usage(void) {
  fprintf(stderr,
          "usage: strata-wal-receiver --segment PATH --segment-start LSN --segment-size BYTES --write-lsn LSN\n"
          "         [--initial-bytes N] [--status-interval-ms MS] [--heartbeat-ms MS] [--buckets S,S,...] [--parent-pid PID]\n"
          "LSNs are decimal byte positions. The socket is fd 3; see the header of wal_receiver.c.\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *path = NULL;
  uint64_t start = 0;
  long parent = 0;
  unsigned long long initial = 0;
  int have_start = 0, have_write = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL) usage();
    if (strcmp(a, "--segment") == 0) path = v;
    else if (strcmp(a, "--segment-start") == 0) start = strtoull(v, NULL, 10), have_start = 1;
    else if (strcmp(a, "--segment-size") == 0) seg_size = strtoull(v, NULL, 10);
    else if (strcmp(a, "--write-lsn") == 0) write_lsn = strtoull(v, NULL, 10), have_write = 1;
    else if (strcmp(a, "--status-interval-ms") == 0) status_interval_ms = strtol(v, NULL, 10);
    else if (strcmp(a, "--heartbeat-ms") == 0) heartbeat_ms = strtol(v, NULL, 10);
    else if (strcmp(a, "--parent-pid") == 0) parent = strtol(v, NULL, 10);
    else if (strcmp(a, "--initial-bytes") == 0) initial = strtoull(v, NULL, 10);
    else if (strcmp(a, "--buckets") == 0) {
      char *s = (char *)v, *end;
      while (*s != 0) {
        if (nbuckets == MAX_BUCKETS) usage();
        bucket_bounds[nbuckets++] = strtod(s, &end);
        if (end == s) usage();
        s = *end == ',' ? end + 1 : end;
      }
    } else usage();
    i++;
  }
  if (path == NULL || !have_start || !have_write || seg_size == 0 || status_interval_ms <= 0 || heartbeat_ms <= 0) usage();

  /* Die with the safekeeper: a killed safekeeper must stop acknowledging WAL at once. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (parent != 0 && getppid() != parent) _exit(0);
  signal(SIGPIPE, SIG_IGN);

  flush_lsn = write_lsn;
  acked_lsn = write_lsn;
  open_segment(path, start);
  /* The stream's first bytes, read by the safekeeper before it handed the socket over. */
  if (initial > IN_CAP) end_text(END_PROTOCOL, 1, "%llu initial bytes do not fit the read buffer", initial);
  while (in_end < initial) {
    ssize_t r = read(STDIN_FILENO, inbuf + in_end, initial - in_end);
    if (r == 0) _exit(0);
    if (r < 0) {
      if (errno == EINTR) continue;
      end_text(END_IO, 1, "reading the initial bytes: %s", strerror(errno));
    }
    in_end += (size_t)r;
  }
  fcntl(SOCK_FD, F_SETFL, fcntl(SOCK_FD, F_GETFL) | O_NONBLOCK);
  fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
  last_status_at = last_progress_at = now_s();

  for (;;) {
    double t = now_s();
    double due = last_status_at + status_interval_ms / 1000.0;
    if (flush_lsn != last_progress_flush) {
      double hb = last_progress_at + heartbeat_ms / 1000.0;
      if (hb < due) due = hb;
    }
    int timeout = due <= t ? 0 : (int)((due - t) * 1000) + 1;
    struct pollfd fds[2];
    fds[0].fd = STDIN_FILENO;
    fds[0].events = POLLIN;
    /* Paused with nothing to send: the socket is not watched at all (a hang-up would wake poll at once, again and again). */
    fds[1].fd = (paused || held) && out_len == 0 ? -1 : SOCK_FD;
    fds[1].events = (short)((paused || held ? 0 : POLLIN) | (out_len > 0 ? POLLOUT : 0));
    fds[1].revents = 0;
    if (poll(fds, 2, timeout) < 0 && errno != EINTR) end_text(END_IO, 1, "poll: %s", strerror(errno));

    if (fds[0].revents) handle_commands();
    if (out_len > 0 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) send_bytes(NULL, 0);

    int segment_full = 0;
    if (!paused) {
      /* A message held at a segment end (now resumed on the next segment) is finished first. */
      if (!held && (fds[1].revents & (POLLIN | POLLERR | POLLHUP))) read_socket();
      segment_full = process_input();
      if (niov > 0) write_pending();
      if (write_lsn > flush_lsn) flush_segment();
      if (flush_lsn > acked_lsn || reply_requested) {
        send_status();
        acked_lsn = flush_lsn;
      }
    }
    if (sock_eof && !held && !paused) {
      end_text(END_CONNECTION, 0, "the compute closed the replication connection at %X/%X", (unsigned)(write_lsn >> 32), (unsigned)write_lsn);
    }
    t = now_s();
    if (t - last_status_at >= status_interval_ms / 1000.0) send_status();
    if (stop_requested) end_stream(END_STOPPED, NULL, 0, 0);
    if (!paused && (segment_full || write_lsn == seg_start + seg_size)) {
      paused = 1;
      emit_paused(PAUSE_SEGMENT_FULL);
      pause_requested = 0;
      continue;
    }
    if (!paused && pause_requested) {
      paused = 1;
      pause_requested = 0;
      emit_paused(PAUSE_REQUESTED);
      continue;
    }
    if (paused && pause_requested) {
      /*
       * Already paused at a segment end: the 'z' reporting that answers this
       * request too (the safekeeper sends 'P' only while it believes us
       * running, so that 'z' is still on its way). A second 'z' would arrive
       * after its resume and read as a pause that did not happen.
       */
      pause_requested = 0;
    }
    if (notify_armed && flush_lsn > notify_after) {
      notify_armed = 0;
      emit_progress();
    } else if (flush_lsn != last_progress_flush && t - last_progress_at >= heartbeat_ms / 1000.0) {
      emit_progress();
    }
  }
}
