/*-------------------------------------------------------------------------
 *
 * walredo.h
 *	  strata's WAL redo helper: shared declarations and the wire protocol.
 *
 * The pageserver keeps a pool of these helpers (src/walredo/pool.ts).  Each
 * is an unmodified PostgreSQL 15 backend started in single-user mode with
 * this library in shared_preload_libraries.  The library takes over the
 * process before InitPostgres() runs and turns it into a server that reads
 * requests on stdin and writes replies on stdout.  The TypeScript codec in
 * src/walredo/protocol.ts mirrors this file; change both together and bump
 * WALREDO_PROTOCOL_VERSION.
 *
 * Wire format (all integers little-endian, both directions):
 *
 *	 frame   := u32 length   -- bytes that follow this field, 5..MAX_FRAME
 *				u8  type
 *				u32 request_id -- echoed in the reply; 0 only for HELLO
 *				payload         -- length - 5 bytes
 *
 * The helper answers requests strictly in the order it receives them, one
 * reply per request, so a client may pipeline any number of requests.
 *
 * Server -> client
 *	 'H' HELLO (once, request_id 0, before anything else):
 *		 u16 protocol_version, u16 reserved (0), u32 built_pg_version_num,
 *		 u32 running_pg_version_num, u32 blcksz, u8 data_checksums,
 *		 u8 wal_log_hints, u8 test_hooks, u8 reserved (0), u32 pid
 *	 'P' PAGE: BLCKSZ bytes
 *	 'E' ERROR: u32 record_index (0xFFFFFFFF: not tied to a record),
 *		 char[5] sqlstate, u8 flags (bit 0: a PANIC in a redo routine was
 *		 caught), u16 message_len, message, u16 context_len, context
 *	 'S' STATS: text "key=value key=value ..."
 *	 'K' OK: empty (reply to a test hook)
 *
 * Client -> server
 *	 'A' APPLY: u32 spc, u32 db, u32 rel, u8 fork, u8 flags, u16 reserved (0),
 *		 u32 blkno, [BLCKSZ base page if flags & APPLY_HAS_BASE],
 *		 u32 nrecords, nrecords * { u64 lsn, u64 end_lsn, u32 len, len bytes }
 *		 -> 'P' the page after replaying the records in order, or 'E'.
 *		 lsn is where the record starts; end_lsn is the MAXALIGNed end,
 *		 what PostgreSQL stamps into pd_lsn (XLogReaderState.EndRecPtr).
 *	 'M' MASK: u8 rmid, u8 reserved (0), u16 reserved (0), u32 blkno, BLCKSZ page
 *		 -> 'P' the page after the resource manager's rm_mask (unchanged if
 *		 the rmgr has none), as wal_consistency_checking compares pages.
 *	 'S' STATS: empty -> 'S'
 *	 'T' TEST HOOK (only with strata_walredo.test_hooks=on): u8 op, u32 arg
 *		 -> 'K' or 'E'; used by fault-injection tests.
 *
 * A frame whose length is out of range, or EOF in the middle of a frame,
 * leaves the stream unsynchronized: the helper exits with a FATAL message on
 * stderr.  EOF at a frame boundary is an orderly shutdown (exit code 0).
 * Every other problem -- unknown type, short payload, bad CRC, refused
 * record type, a redo routine's ERROR or PANIC -- is an 'E' reply for that
 * request only.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STRATA_WALREDO_H
#define STRATA_WALREDO_H

#include "access/xlogdefs.h"
#include "common/relpath.h"
#include "storage/block.h"
#include "storage/relfilenode.h"

#ifdef WORDS_BIGENDIAN
#error "the walredo protocol is little-endian and this code copies integers as-is"
#endif

#define WALREDO_PROTOCOL_VERSION 1

/* frame header: u32 length + u8 type + u32 request id */
#define WALREDO_FRAME_HEADER_BYTES 9
/* bytes counted by the length field that are not payload (type + id) */
#define WALREDO_FRAME_MIN_LENGTH 5

/*
 * Largest frame either side accepts.  The client splits long record chains
 * into several requests well below this (src/walredo/pool.ts); a larger
 * length can only mean a desynchronized stream.  64 MiB still admits any
 * single per-page record PostgreSQL writes in practice.
 */
#define WALREDO_MAX_FRAME_BYTES (64 * 1024 * 1024)

/*
 * Most records one APPLY may carry: bounds the per-request loop and the
 * decode work a single (possibly malicious) frame can ask for.
 */
#define WALREDO_MAX_RECORDS_PER_REQUEST 100000

/* message types */
#define WALREDO_MSG_HELLO 'H'
#define WALREDO_MSG_PAGE 'P'
#define WALREDO_MSG_ERROR 'E'
#define WALREDO_MSG_STATS 'S'
#define WALREDO_MSG_OK 'K'
#define WALREDO_MSG_APPLY 'A'
#define WALREDO_MSG_MASK 'M'
#define WALREDO_MSG_TEST 'T'

/* APPLY flags */
#define WALREDO_APPLY_HAS_BASE 0x01
#define WALREDO_APPLY_SET_CHECKSUM 0x02
#define WALREDO_APPLY_KNOWN_FLAGS (WALREDO_APPLY_HAS_BASE | WALREDO_APPLY_SET_CHECKSUM)

/* ERROR flags */
#define WALREDO_ERROR_PANIC_CAUGHT 0x01

#define WALREDO_NO_RECORD 0xFFFFFFFFu

/* TEST HOOK operations */
#define WALREDO_TEST_SLEEP_MS 1		/* sleep arg milliseconds, then reply */
#define WALREDO_TEST_ABORT 2		/* abort(): simulate a crash */
#define WALREDO_TEST_PANIC_IN_REDO 3	/* elog(PANIC) as a redo routine would */
#define WALREDO_TEST_ERROR_IN_CRIT 4	/* ERROR inside a critical section */

/* ---- walredo_io.c: framing over stdin/stdout ---- */

/* A received frame; payload lives in a buffer owned by walredo_io.c. */
typedef struct WalRedoFrame
{
	char		type;
	uint32		request_id;
	const char *payload;
	uint32		payload_len;
} WalRedoFrame;

/* Bounds-checked reader over a frame's payload. */
typedef struct WalRedoCursor
{
	const char *data;
	uint32		len;
	uint32		pos;
} WalRedoCursor;

extern void walredo_io_init(void);
extern bool walredo_read_frame(WalRedoFrame *frame);
extern void walredo_send_frame(char type, uint32 request_id,
							   const char *payload, uint32 payload_len);
extern void walredo_flush_output(void);

extern void walredo_cursor_init(WalRedoCursor *c, const char *data, uint32 len);
extern uint8 walredo_get_u8(WalRedoCursor *c);
extern uint16 walredo_get_u16(WalRedoCursor *c);
extern uint32 walredo_get_u32(WalRedoCursor *c);
extern uint64 walredo_get_u64(WalRedoCursor *c);
extern const char *walredo_get_bytes(WalRedoCursor *c, uint32 n);
extern void walredo_expect_end(WalRedoCursor *c);

/* ---- walredo_apply.c: replay onto one target page ---- */

typedef struct WalRedoStats
{
	uint64		requests;
	uint64		records;
	uint64		errors;
	uint64		panics_caught;
	uint64		midrequest_purges;
} WalRedoStats;

extern WalRedoStats walredo_stats;

/* true while a resource manager's redo routine runs (PANIC is caught then) */
extern volatile bool walredo_in_redo;

extern void walredo_apply_init(void);
extern void walredo_begin_target(RelFileNode rnode, ForkNumber forknum,
								 BlockNumber blkno, const char *base_page);
extern void walredo_apply_record(const char *data, uint32 len,
								 XLogRecPtr lsn, XLogRecPtr end_lsn);
extern void walredo_finish_target(char *page_out);
extern void walredo_cleanup_after_error(void);
extern void walredo_mask_page(uint8 rmid, BlockNumber blkno, char *page);
extern int	walredo_count_used_buffers(int *npinned);

#endif							/* STRATA_WALREDO_H */
