/*-------------------------------------------------------------------------
 *
 * walredo_apply.c
 *	  Replay of WAL records onto one target page, in shared buffers only.
 *
 * One APPLY request names a target block (relation, fork, block number),
 * optionally gives its previous version, and lists records in LSN order.
 * walredo_begin_target() puts the base page (or zeros) into a shared buffer;
 * walredo_apply_record() runs the resource manager's own redo routine for
 * each record; walredo_finish_target() copies the result out and throws
 * every buffer the request touched away.
 *
 * Invariants that make this safe inside an unmodified server:
 *
 *	- Relation files are never touched.  Before a record is replayed, every
 *	  fork of every relation it references is made to look already open in
 *	  md.c, each segment a /dev/null descriptor, with a cached size of
 *	  MaxBlockNumber.  smgrcreate() then returns at once, smgrnblocks() never
 *	  extends, and a page that is not in shared buffers (a VM or FSM page the
 *	  redo routine wants) reads as zeros, because md.c zero-fills short reads
 *	  during recovery.  The stub data directory has no base/ directory at
 *	  all, so any path this misses fails instead of writing.
 *	  The fake storage of recently used relations stays open between
 *	  requests (a bounded cache); an error closes all of it.
 *	- Nothing is ever written back.  No checkpointer or bgwriter exists; the
 *	  buffer pool is kept at most half full (a purge in the middle of a long
 *	  request copies the target out and back), so the clock sweep always
 *	  finds a free buffer and never evicts a dirty one.  Even an explicit
 *	  flush (redo of an init fork) only reaches /dev/null, and XLogFlush() is
 *	  a no-op because the stub's pg_control has no minRecoveryPoint.
 *	- The target buffer is not kept pinned between records: redo routines
 *	  that take a cleanup lock (heap prune) insist on a single local pin.
 *	  The block reference's prefetch_buffer lets redo find it directly.
 *	- Other blocks a record references get an empty page whose pd_lsn is the
 *	  record's end, so redo sees "already applied" (BLK_DONE) with a valid
 *	  buffer; a zero page would give InvalidBuffer, which BRIN redo cannot
 *	  handle.  Consequently only redo that needs nothing but the target
 *	  block's previous contents is correct -- true of every built-in access
 *	  method, and what the consistency tests keep proving.
 *	- Records that are not per-page changes (transaction status, SLRUs,
 *	  relation creation and truncation, checkpoints, logical rewrite files,
 *	  custom resource managers) are refused: the pageserver handles them.
 *
 * Base pages are trusted to be PostgreSQL pages (they come from strata's own
 * checksummed storage); records are CRC-checked and decoded by PostgreSQL's
 * own decoder before any redo routine sees them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>

#include "access/heapam_xlog.h"
#include "access/htup_details.h"
#include "access/rmgr.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "access/xlogrecord.h"
#include "access/xlogrecovery.h"
#include "access/xlogutils.h"
#include "catalog/pg_control.h"
#include "lib/stringinfo.h"
#include "port/pg_crc32c.h"
#include "storage/buf_internals.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "storage/fd.h"
#include "storage/smgr.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "walredo.h"

/*
 * md.c's per-segment descriptor.  smgr.h only forward-declares it; the
 * layout is fixed within a major version, which is why the helper refuses
 * to run in a server it was not built for (walredo_main.c).
 */
typedef struct _MdfdVec
{
	File		mdfd_vfd;
	BlockNumber mdfd_segno;
} MdfdVec;

/*
 * Distinct relations one request may touch.  A record references at most
 * XLR_MAX_BLOCK_ID + 1 blocks; records of one reconstruction nearly always
 * share one or two relations.  Exceeding this is a malformed request.
 */
#define MAX_TOUCHED_RELS 64

/*
 * Heap blocks covered by one FSM leaf page is LeafNodesPerPage (4069 with
 * 8 KiB pages); dividing by a smaller number over-estimates the FSM block a
 * heap block maps to, so enough fake segments are always open.  The slack
 * covers the FSM's upper-level pages.
 */
#define FSM_HEAP_BLOCKS_PER_PAGE_LOW 4000
#define FSM_UPPER_PAGES_SLACK 16

WalRedoStats walredo_stats;
volatile bool walredo_in_redo = false;

static XLogReaderState *reader = NULL;

/* the current request's target */
static RelFileNode target_rnode;
static ForkNumber target_fork;
static BlockNumber target_blkno;
static Buffer target_buffer = InvalidBuffer;
static bool target_active = false;

static RelFileNode touched_rels[MAX_TOUCHED_RELS];
static int	n_touched_rels = 0;

/*
 * Relations whose fake storage stays open between requests, so a stream of
 * requests for one relation does not open and close /dev/null four or more
 * times per request.  Past this many, all are closed (a simple bound on the
 * descriptors and smgr entries the cache can hold).
 */
#define MAX_CACHED_FAKE_RELS 64
static RelFileNode cached_rels[MAX_CACHED_FAKE_RELS];
static int	n_cached_rels = 0;
static bool cache_overflowed = false;

static PGAlignedBlock scratch_page;

static void load_target_page(const char *content);

void
walredo_apply_init(void)
{
	reader = XLogReaderAllocate(wal_segment_size, NULL,
								XL_ROUTINE(.page_read = NULL), NULL);
	if (reader == NULL)
		ereport(FATAL, (errmsg("strata_walredo: out of memory allocating the WAL reader")));
}

/* ---------------------------------------------------------------- storage */

static void
remember_cached_rel(RelFileNode rnode)
{
	for (int i = 0; i < n_cached_rels; i++)
		if (RelFileNodeEquals(cached_rels[i], rnode))
			return;
	if (n_cached_rels < MAX_CACHED_FAKE_RELS)
		cached_rels[n_cached_rels++] = rnode;
	else
		cache_overflowed = true;
}

/* closes the fake storage of every cached relation (and of any that overflowed) */
static void
close_cached_relations(void)
{
	for (int i = 0; i < n_cached_rels; i++)
		smgrclose(smgropen(cached_rels[i], InvalidBackendId));
	n_cached_rels = 0;
	if (cache_overflowed)
		smgrcloseall();
	cache_overflowed = false;
}

static void
remember_rel(RelFileNode rnode)
{
	for (int i = 0; i < n_touched_rels; i++)
		if (RelFileNodeEquals(touched_rels[i], rnode))
			return;
	remember_cached_rel(rnode);
	if (n_touched_rels >= MAX_TOUCHED_RELS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("strata_walredo: one request references more than %d relations",
						MAX_TOUCHED_RELS)));
	touched_rels[n_touched_rels++] = rnode;
}

static int
segments_needed(ForkNumber fork, ForkNumber referenced_fork, BlockNumber blkno)
{
	if (fork == referenced_fork)
		return blkno / RELSEG_SIZE + 1;
	if (referenced_fork == MAIN_FORKNUM &&
		(fork == FSM_FORKNUM || fork == VISIBILITYMAP_FORKNUM))
		return (blkno / FSM_HEAP_BLOCKS_PER_PAGE_LOW + FSM_UPPER_PAGES_SLACK) / RELSEG_SIZE + 1;
	return 1;
}

/*
 * Makes every fork of 'rnode' look open in md.c, backed by /dev/null, with
 * enough segments for 'blkno' of 'forknum' (and for the FSM/VM pages a main
 * fork block maps to), and a cached size of MaxBlockNumber.
 */
static void
fake_relation_storage(RelFileNode rnode, ForkNumber forknum, BlockNumber blkno)
{
	SMgrRelation reln;

	remember_rel(rnode);
	reln = smgropen(rnode, InvalidBackendId);

	for (int f = 0; f <= MAX_FORKNUM; f++)
	{
		int			want = segments_needed(f, forknum, blkno);
		int			have = reln->md_num_open_segs[f];

		if (have < want)
		{
			MdfdVec    *segs;

			if (have == 0)
				segs = MemoryContextAlloc(TopMemoryContext, sizeof(MdfdVec) * want);
			else
				segs = repalloc(reln->md_seg_fds[f], sizeof(MdfdVec) * want);
			reln->md_seg_fds[f] = segs;
			for (int s = have; s < want; s++)
			{
				segs[s].mdfd_vfd = PathNameOpenFile("/dev/null", O_RDWR | PG_BINARY);
				if (segs[s].mdfd_vfd < 0)
					ereport(FATAL,
							(errmsg("strata_walredo: could not open /dev/null: %m")));
				segs[s].mdfd_segno = s;
				/* keep md.c's count in step so mdclose() closes what exists */
				reln->md_num_open_segs[f] = s + 1;
			}
		}
		reln->smgr_cached_nblocks[f] = MaxBlockNumber;
	}
}

int
walredo_count_used_buffers(int *npinned)
{
	int			used = 0;
	int			pinned = 0;

	for (int i = 0; i < NBuffers; i++)
	{
		BufferDesc *hdr = GetBufferDescriptor(i);
		uint32		state = pg_atomic_read_u32(&hdr->state);

		if (state & BM_TAG_VALID)
			used++;
		if (BUF_STATE_GET_REFCOUNT(state) > 0)
			pinned++;
	}
	if (npinned)
		*npinned = pinned;
	return used;
}

static void
load_target_page(const char *content)
{
	Buffer		buf;

	fake_relation_storage(target_rnode, target_fork, target_blkno);
	buf = ReadBufferWithoutRelcache(target_rnode, target_fork, target_blkno,
									RBM_ZERO_AND_LOCK, NULL, true);
	memcpy(BufferGetPage(buf), content, BLCKSZ);
	MarkBufferDirty(buf);
	UnlockReleaseBuffer(buf);
	target_buffer = buf;
}

static void
copy_target_page(char *dst)
{
	if (!BufferIsValid(target_buffer) ||
		!ReadRecentBuffer(target_rnode, target_fork, target_blkno, target_buffer))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("strata_walredo: the target page %u/%u/%u fork %d block %u left shared buffers",
						target_rnode.spcNode, target_rnode.dbNode, target_rnode.relNode,
						target_fork, target_blkno)));
	memcpy(dst, BufferGetPage(target_buffer), BLCKSZ);
	ReleaseBuffer(target_buffer);
}

/* an empty page stamped "already applied" for a non-target block */
static Buffer
load_placeholder_page(RelFileNode rnode, ForkNumber forknum, BlockNumber blkno,
					  XLogRecPtr end_lsn)
{
	Buffer		buf;
	Page		page;

	buf = ReadBufferWithoutRelcache(rnode, forknum, blkno, RBM_ZERO_AND_LOCK, NULL, true);
	page = BufferGetPage(buf);
	PageInit(page, BLCKSZ, 0);
	PageSetLSN(page, end_lsn);
	MarkBufferDirty(buf);
	UnlockReleaseBuffer(buf);
	return buf;
}

/* throws away (never writes) every buffer of the touched relations */
static void
drop_touched_buffers(void)
{
	SMgrRelation rels[MAX_TOUCHED_RELS];

	target_buffer = InvalidBuffer;
	if (n_touched_rels == 0)
		return;
	for (int i = 0; i < n_touched_rels; i++)
		rels[i] = smgropen(touched_rels[i], InvalidBackendId);
	DropRelFileNodesAllBuffers(rels, n_touched_rels);
}

/*
 * Forgets invalid-page entries of the request's relations.  Their fake
 * storage stays open for the next request (see MAX_CACHED_FAKE_RELS) unless
 * the cache overflowed or `close_all` (after an error) asks otherwise.
 */
static void
release_touched_relations(bool close_all)
{
	if (XLogHaveInvalidPages())
		for (int i = 0; i < n_touched_rels; i++)
			for (int f = 0; f <= MAX_FORKNUM; f++)
				XLogDropRelation(touched_rels[i], f);
	n_touched_rels = 0;
	if (close_all || cache_overflowed)
		close_cached_relations();
}

/* ------------------------------------------------------------------ redo */

static void
redo_error_context(void *arg)
{
	XLogReaderState *r = (XLogReaderState *) arg;
	StringInfoData buf;

	if (r->record == NULL)
		return;
	initStringInfo(&buf);
	xlog_outdesc(&buf, r);
	errcontext("WAL redo at %X/%X for %s", LSN_FORMAT_ARGS(r->ReadRecPtr), buf.data);
	pfree(buf.data);
}

/*
 * Which records the helper replays.  Everything else changes state the
 * pageserver keeps itself (or nothing page-shaped at all).
 */
static bool
record_is_per_page(RmgrId rmid, uint8 info)
{
	switch (rmid)
	{
		case RM_XLOG_ID:
			return info == XLOG_FPI || info == XLOG_FPI_FOR_HINT;
		case RM_HEAP2_ID:
			/* REWRITE writes mapping files under pg_logical/ */
			return (info & XLOG_HEAP_OPMASK) != XLOG_HEAP2_REWRITE;
		case RM_HEAP_ID:
		case RM_BTREE_ID:
		case RM_HASH_ID:
		case RM_GIN_ID:
		case RM_GIST_ID:
		case RM_SEQ_ID:
		case RM_SPGIST_ID:
		case RM_BRIN_ID:
		case RM_GENERIC_ID:
			return true;
		default:
			return false;
	}
}

static const char *
rmgr_name(RmgrId rmid)
{
	if (rmid <= RM_MAX_BUILTIN_ID && RmgrIdExists(rmid))
		return GetRmgr(rmid).rm_name;
	return "unknown";
}

void
walredo_begin_target(RelFileNode rnode, ForkNumber forknum, BlockNumber blkno,
					 const char *base_page)
{
	Assert(!target_active && n_touched_rels == 0);
	target_rnode = rnode;
	target_fork = forknum;
	target_blkno = blkno;
	target_active = true;
	load_target_page(base_page);
}

void
walredo_apply_record(const char *data, uint32 len, XLogRecPtr lsn, XLogRecPtr end_lsn)
{
	XLogRecord *rec;
	DecodedXLogRecord *decoded;
	char	   *errormsg = NULL;
	pg_crc32c	crc;
	uint8		info;
	ErrorContextCallback errcb;
	int			used;
	int			pinned;

	Assert(target_active);

	if (len < SizeOfXLogRecord)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("strata_walredo: record at %X/%X is %u bytes, shorter than a record header (%zu)",
						LSN_FORMAT_ARGS(lsn), len, SizeOfXLogRecord)));

	/* a MAXALIGNed private copy: the decoder points into it */
	rec = (XLogRecord *) palloc(len);
	memcpy(rec, data, len);

	if (rec->xl_tot_len != len)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("strata_walredo: record at %X/%X says it is %u bytes long but %u bytes were sent (truncated record?)",
						LSN_FORMAT_ARGS(lsn), rec->xl_tot_len, len)));

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, ((char *) rec) + SizeOfXLogRecord, len - SizeOfXLogRecord);
	COMP_CRC32C(crc, (char *) rec, offsetof(XLogRecord, xl_crc));
	FIN_CRC32C(crc);
	if (!EQ_CRC32C(rec->xl_crc, crc))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("strata_walredo: incorrect CRC in record at %X/%X: stored %08X, computed %08X",
						LSN_FORMAT_ARGS(lsn), rec->xl_crc, crc)));

	info = rec->xl_info & ~XLR_INFO_MASK;
	if (rec->xl_rmid > RM_MAX_BUILTIN_ID || !RmgrIdExists(rec->xl_rmid) ||
		!record_is_per_page(rec->xl_rmid, info))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("strata_walredo: refusing record at %X/%X of resource manager %d (%s) with info 0x%02X: not a per-page record",
						LSN_FORMAT_ARGS(lsn), rec->xl_rmid, rmgr_name(rec->xl_rmid), info)));

	decoded = (DecodedXLogRecord *) palloc(DecodeXLogRecordRequiredSpace(len));
	decoded->oversized = false;
	reader->ReadRecPtr = lsn;
	reader->EndRecPtr = end_lsn;
	reader->record = NULL;
	reader->errormsg_buf[0] = '\0';
	if (!DecodeXLogRecord(reader, decoded, rec, lsn, &errormsg))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("strata_walredo: could not decode record at %X/%X: %s",
						LSN_FORMAT_ARGS(lsn), errormsg ? errormsg : "unknown reason")));
	decoded->next_lsn = end_lsn;

	for (int i = 0; i <= decoded->max_block_id; i++)
	{
		DecodedBkpBlock *blk = &decoded->blocks[i];
		bool		initializes = (blk->flags & BKPBLOCK_WILL_INIT) != 0 ||
			(blk->has_image && blk->apply_image);

		if (!blk->in_use)
			continue;
		fake_relation_storage(blk->rnode, blk->forknum, blk->blkno);
		if (RelFileNodeEquals(blk->rnode, target_rnode) &&
			blk->forknum == target_fork && blk->blkno == target_blkno)
		{
			blk->prefetch_buffer = target_buffer;
			if (!initializes && PageIsNew(BufferGetPage(target_buffer)))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("strata_walredo: record at %X/%X modifies block %u but no previous version of the page was sent",
								LSN_FORMAT_ARGS(lsn), target_blkno)));
		}
		else if (!initializes)
			blk->prefetch_buffer = load_placeholder_page(blk->rnode, blk->forknum,
														 blk->blkno, end_lsn);
	}
	reader->record = decoded;

	errcb.callback = redo_error_context;
	errcb.arg = reader;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	walredo_in_redo = true;
	GetRmgr(rec->xl_rmid).rm_redo(reader);
	walredo_in_redo = false;

	error_context_stack = errcb.previous;
	reader->record = NULL;
	pfree(decoded);
	pfree(rec);
	walredo_stats.records++;

	used = walredo_count_used_buffers(&pinned);
	if (pinned != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("strata_walredo: redo of record at %X/%X left %d buffers pinned",
						LSN_FORMAT_ARGS(lsn), pinned)));
	if (used > NBuffers / 2)
	{
		/* keep the pool at most half full: see the header comment */
		copy_target_page(scratch_page.data);
		drop_touched_buffers();
		load_target_page(scratch_page.data);
		walredo_stats.midrequest_purges++;
	}
}

void
walredo_finish_target(char *page_out)
{
	Assert(target_active);
	copy_target_page(page_out);
	drop_touched_buffers();
	release_touched_relations(false);
	target_active = false;
}

/*
 * After an ERROR (or a caught PANIC) anywhere in a request.  The caller has
 * already released locks and pins, so every buffer can be dropped.
 */
void
walredo_cleanup_after_error(void)
{
	walredo_in_redo = false;
	if (reader)
		reader->record = NULL;
	drop_touched_buffers();
	release_touched_relations(true);
	target_active = false;
}

/* ------------------------------------------------------------------ mask */

/*
 * rm_mask routines trust the page header; heap_mask also follows every line
 * pointer into the tuple it points at (and writes there).  Check that none of
 * that leads outside the page.  Other access methods' pages do not always
 * hold line pointers below pd_lower (GIN posting lists, metapages), and their
 * mask routines only touch the line pointers themselves, so only heap pages
 * get the per-item check.
 */
static void
check_page_maskable(const char *page, bool heap_items)
{
	PageHeader	hdr = (PageHeader) page;
	int			nitems;

	if (PageIsNew((Page) page))
		return;
	if (hdr->pd_lower < SizeOfPageHeaderData || hdr->pd_lower > hdr->pd_upper ||
		hdr->pd_upper > hdr->pd_special || hdr->pd_special > BLCKSZ ||
		hdr->pd_special != MAXALIGN(hdr->pd_special))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("strata_walredo: cannot mask a malformed page (lower %u, upper %u, special %u)",
						hdr->pd_lower, hdr->pd_upper, hdr->pd_special)));
	if (!heap_items)
		return;
	nitems = (hdr->pd_lower - SizeOfPageHeaderData) / sizeof(ItemIdData);
	for (int i = 0; i < nitems; i++)
	{
		ItemId		iid = &hdr->pd_linp[i];

		if (ItemIdIsUsed(iid) && ItemIdHasStorage(iid) &&
			(ItemIdGetOffset(iid) < SizeOfPageHeaderData ||
			 ItemIdGetOffset(iid) + Max(ItemIdGetLength(iid), MAXALIGN(SizeofHeapTupleHeader)) > BLCKSZ))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("strata_walredo: cannot mask a malformed page: item %d at offset %u length %u",
							i + 1, ItemIdGetOffset(iid), ItemIdGetLength(iid))));
	}
}

void
walredo_mask_page(uint8 rmid, BlockNumber blkno, char *page)
{
	if (rmid > RM_MAX_BUILTIN_ID || !RmgrIdExists(rmid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("strata_walredo: cannot mask with unknown resource manager %d", rmid)));
	check_page_maskable(page, rmid == RM_HEAP_ID || rmid == RM_HEAP2_ID);
	if (GetRmgr(rmid).rm_mask != NULL)
		GetRmgr(rmid).rm_mask(page, blkno);
}
