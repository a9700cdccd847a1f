/*-------------------------------------------------------------------------
 *
 * walredo_main.c
 *	  Start-up, request loop and error recovery of strata's WAL redo helper.
 *
 * The helper is an unmodified PostgreSQL 15 backend:
 *
 *	 postgres --single -D <stub> -c shared_preload_libraries=<abs>/strata_walredo.so \
 *		 -c strata_walredo.enable=on -c shared_buffers=2MB ... postgres
 *
 * _PG_init() checks that the server is exactly the PostgreSQL version this
 * library was compiled against (the helper depends on server internals that
 * are only stable within a minor release) and installs a shmem_startup_hook.
 * That hook runs once shared memory exists, before single-user mode would
 * call InitProcess() and InitPostgres().  It finishes the process set-up
 * itself and never returns, so StartupXLOG() never runs: the server stays
 * "in crash recovery", can write no WAL, and never modifies its (throw-away,
 * per-process) stub data directory beyond postmaster.pid.
 *
 * Error handling follows the auxiliary processes' sigsetjmp pattern.  Any
 * ERROR while handling a request unwinds to the loop, which releases locks,
 * pins and buffers, replies 'E' for that request only and carries on.  Many
 * redo sanity checks are elog(PANIC) -- and any ERROR inside a critical
 * section becomes one; while a redo routine runs, an emit_log_hook turns such
 * a PANIC into the same recovery path before errfinish() can abort().  Its
 * effects live only in buffers of the request's relations, which recovery
 * throws away.  A PANIC anywhere else still aborts the process; the pool
 * restarts it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "access/xlogutils.h"
#include "access/rmgr.h"
#include "access/xlog_internal.h"
#include "fmgr.h"
#include "libpq/pqsignal.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "walredo.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * The PostgreSQL version this build is for.  Only tests override it, to
 * exercise the start-up check without a second PostgreSQL installation.
 */
#ifndef WALREDO_BUILT_VERSION_NUM
#define WALREDO_BUILT_VERSION_NUM PG_VERSION_NUM
#endif

/* error texts in replies are cut to this (a page of context is plenty) */
#define MAX_ERROR_TEXT_BYTES 4000

static bool walredo_enable = false;
static bool walredo_test_hooks = false;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

static MemoryContext request_context;
static MemoryContext error_context;

/* what the current request is, for the error reply */
static uint32 current_request_id = 0;
static uint32 current_record_index = WALREDO_NO_RECORD;
static bool panic_was_caught = false;

static void walredo_main_loop(void) pg_attribute_noreturn();

/* ------------------------------------------------------------- replies */

static void
put_u16(StringInfo s, uint16 v)
{
	appendBinaryStringInfo(s, (char *) &v, 2);
}

static void
put_u32(StringInfo s, uint32 v)
{
	appendBinaryStringInfo(s, (char *) &v, 4);
}

static void
put_text(StringInfo s, const char *text)
{
	size_t		len = text ? strlen(text) : 0;

	if (len > MAX_ERROR_TEXT_BYTES)
		len = MAX_ERROR_TEXT_BYTES;
	put_u16(s, (uint16) len);
	if (len > 0)
		appendBinaryStringInfo(s, text, (int) len);
}

static void
send_error_reply(ErrorData *edata)
{
	StringInfoData s;
	const char *sqlstate = unpack_sql_state(edata->sqlerrcode);
	uint8		flags = panic_was_caught ? WALREDO_ERROR_PANIC_CAUGHT : 0;

	initStringInfo(&s);
	put_u32(&s, current_record_index);
	appendBinaryStringInfo(&s, sqlstate, 5);
	appendBinaryStringInfo(&s, (char *) &flags, 1);
	put_text(&s, edata->message ? edata->message : "unknown error");
	put_text(&s, edata->context);
	walredo_send_frame(WALREDO_MSG_ERROR, current_request_id, s.data, (uint32) s.len);
	pfree(s.data);
}

static void
send_hello(void)
{
	StringInfoData s;
	uint8		b;

	initStringInfo(&s);
	put_u16(&s, WALREDO_PROTOCOL_VERSION);
	put_u16(&s, 0);
	put_u32(&s, WALREDO_BUILT_VERSION_NUM);
	put_u32(&s, (uint32) atoi(GetConfigOption("server_version_num", false, false)));
	put_u32(&s, BLCKSZ);
	b = DataChecksumsEnabled() ? 1 : 0;
	appendBinaryStringInfo(&s, (char *) &b, 1);
	b = wal_log_hints ? 1 : 0;
	appendBinaryStringInfo(&s, (char *) &b, 1);
	b = walredo_test_hooks ? 1 : 0;
	appendBinaryStringInfo(&s, (char *) &b, 1);
	b = 0;
	appendBinaryStringInfo(&s, (char *) &b, 1);
	put_u32(&s, (uint32) MyProcPid);
	walredo_send_frame(WALREDO_MSG_HELLO, 0, s.data, (uint32) s.len);
	pfree(s.data);
}

/* ------------------------------------------------------------- handlers */

static void
handle_apply(WalRedoCursor *c)
{
	RelFileNode rnode;
	ForkNumber	forknum;
	BlockNumber blkno;
	uint8		flags;
	uint32		nrecords;
	XLogRecPtr	prev_end = InvalidXLogRecPtr;
	PGAlignedBlock page;

	rnode.spcNode = walredo_get_u32(c);
	rnode.dbNode = walredo_get_u32(c);
	rnode.relNode = walredo_get_u32(c);
	forknum = walredo_get_u8(c);
	flags = walredo_get_u8(c);
	(void) walredo_get_u16(c);
	blkno = walredo_get_u32(c);

	if (forknum > MAX_FORKNUM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("strata_walredo: invalid fork number %d", forknum)));
	if (blkno == InvalidBlockNumber)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("strata_walredo: invalid block number %u", blkno)));
	if (flags & ~WALREDO_APPLY_KNOWN_FLAGS)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("strata_walredo: unknown APPLY flags 0x%02X", flags)));

	if (flags & WALREDO_APPLY_HAS_BASE)
		memcpy(page.data, walredo_get_bytes(c, BLCKSZ), BLCKSZ);
	else
		memset(page.data, 0, BLCKSZ);

	nrecords = walredo_get_u32(c);
	if (nrecords > WALREDO_MAX_RECORDS_PER_REQUEST)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("strata_walredo: %u records in one request exceed the limit of %d",
						nrecords, WALREDO_MAX_RECORDS_PER_REQUEST)));

	walredo_begin_target(rnode, forknum, blkno, page.data);
	for (uint32 i = 0; i < nrecords; i++)
	{
		XLogRecPtr	lsn;
		XLogRecPtr	end_lsn;
		uint32		len;
		const char *data;

		current_record_index = i;
		lsn = walredo_get_u64(c);
		end_lsn = walredo_get_u64(c);
		len = walredo_get_u32(c);
		data = walredo_get_bytes(c, len);
		if (lsn == InvalidXLogRecPtr || end_lsn < lsn + len || lsn < prev_end)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("strata_walredo: record %u has inconsistent LSNs: start %X/%X, end %X/%X, length %u, previous end %X/%X",
							i, LSN_FORMAT_ARGS(lsn), LSN_FORMAT_ARGS(end_lsn), len,
							LSN_FORMAT_ARGS(prev_end))));
		walredo_apply_record(data, len, lsn, end_lsn);
		prev_end = end_lsn;
	}
	current_record_index = WALREDO_NO_RECORD;
	walredo_expect_end(c);

	walredo_finish_target(page.data);
	if ((flags & WALREDO_APPLY_SET_CHECKSUM) && !PageIsNew((Page) page.data))
		((PageHeader) page.data)->pd_checksum = pg_checksum_page(page.data, blkno);
	walredo_send_frame(WALREDO_MSG_PAGE, current_request_id, page.data, BLCKSZ);
}

static void
handle_mask(WalRedoCursor *c)
{
	uint8		rmid;
	BlockNumber blkno;
	char	   *page;

	rmid = walredo_get_u8(c);
	(void) walredo_get_u8(c);
	(void) walredo_get_u16(c);
	blkno = walredo_get_u32(c);

	/*
	 * Slack after the page: mask routines of some access methods read their
	 * special-area struct without checking that it fits.
	 */
	page = palloc0(2 * BLCKSZ);
	memcpy(page, walredo_get_bytes(c, BLCKSZ), BLCKSZ);
	walredo_expect_end(c);
	walredo_mask_page(rmid, blkno, page);
	walredo_send_frame(WALREDO_MSG_PAGE, current_request_id, page, BLCKSZ);
}

static long
resident_set_kb(void)
{
	long		size_pages = 0;
	long		rss_pages = -1;
	FILE	   *f = fopen("/proc/self/statm", "r");

	if (f == NULL)
		return -1;
	if (fscanf(f, "%ld %ld", &size_pages, &rss_pages) != 2)
		rss_pages = -1;
	fclose(f);
	return rss_pages < 0 ? -1 : rss_pages * (sysconf(_SC_PAGESIZE) / 1024);
}

static void
handle_stats(WalRedoCursor *c)
{
	StringInfoData s;
	int			pinned;
	int			used;

	walredo_expect_end(c);
	used = walredo_count_used_buffers(&pinned);
	initStringInfo(&s);
	appendStringInfo(&s,
					 "requests=%llu records=%llu errors=%llu panics_caught=%llu "
					 "midrequest_purges=%llu rss_kb=%ld memory_bytes=%zu "
					 "used_buffers=%d pinned_buffers=%d nbuffers=%d invalid_pages=%d",
					 (unsigned long long) walredo_stats.requests,
					 (unsigned long long) walredo_stats.records,
					 (unsigned long long) walredo_stats.errors,
					 (unsigned long long) walredo_stats.panics_caught,
					 (unsigned long long) walredo_stats.midrequest_purges,
					 resident_set_kb(),
					 MemoryContextMemAllocated(TopMemoryContext, true),
					 used, pinned, NBuffers, XLogHaveInvalidPages() ? 1 : 0);
	walredo_send_frame(WALREDO_MSG_STATS, current_request_id, s.data, (uint32) s.len);
	pfree(s.data);
}

static void
handle_test_hook(WalRedoCursor *c)
{
	uint8		op = walredo_get_u8(c);
	uint32		arg = walredo_get_u32(c);

	walredo_expect_end(c);
	if (!walredo_test_hooks)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("strata_walredo: test hooks are disabled (strata_walredo.test_hooks=off)")));
	switch (op)
	{
		case WALREDO_TEST_SLEEP_MS:
			pg_usleep((long) arg * 1000L);
			break;
		case WALREDO_TEST_ABORT:
			walredo_flush_output();
			abort();
			break;
		case WALREDO_TEST_PANIC_IN_REDO:
			walredo_in_redo = true;
			elog(PANIC, "strata_walredo: test PANIC inside a redo routine");
			break;
		case WALREDO_TEST_ERROR_IN_CRIT:
			walredo_in_redo = true;
			START_CRIT_SECTION();
			elog(ERROR, "strata_walredo: test ERROR inside a critical section");
			END_CRIT_SECTION();
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("strata_walredo: unknown test hook %d", op)));
	}
	walredo_send_frame(WALREDO_MSG_OK, current_request_id, NULL, 0);
}

/* ------------------------------------------------------------- main */

/*
 * Turns a PANIC raised inside a redo routine into ordinary error recovery.
 * errfinish() calls EmitErrorReport() -- and so this hook -- before it
 * aborts; jumping out here skips the abort.  Not used outside redo: there a
 * PANIC means the process itself is broken.
 */
static void
walredo_emit_log_hook(ErrorData *edata)
{
	if (walredo_in_redo && edata->elevel >= PANIC && PG_exception_stack != NULL)
	{
		walredo_in_redo = false;
		edata->elevel = ERROR;
		InterruptHoldoffCount = 0;
		QueryCancelHoldoffCount = 0;
		CritSectionCount = 0;
		panic_was_caught = true;
		walredo_stats.panics_caught++;
		siglongjmp(*PG_exception_stack, 1);
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
walredo_main_loop(void)
{
	sigjmp_buf	local_sigjmp_buf;
	WalRedoFrame frame;

	/* what PostgresSingleUserMain() would have done next */
	InitProcess();

	pqsignal(SIGHUP, SIG_IGN);
	pqsignal(SIGINT, SIG_DFL);
	pqsignal(SIGTERM, SIG_DFL);
	pqsignal(SIGQUIT, SIG_DFL);
	pqsignal(SIGPIPE, SIG_IGN);
	pqsignal(SIGUSR1, SIG_IGN);
	pqsignal(SIGUSR2, SIG_IGN);

	BaseInit();
	PG_SETMASK(&UnBlockSig);
	SetProcessingMode(NormalProcessing);
	CreateAuxProcessResourceOwner();

	/* redo routines expect to run during recovery */
	InRecovery = true;
	standbyState = STANDBY_DISABLED;
	/* invalid-page references are remembered (and dropped), not PANICs */
	reachedConsistency = false;

	MemoryContextSwitchTo(TopMemoryContext);
	request_context = AllocSetContextCreate(TopMemoryContext, "strata_walredo request",
											ALLOCSET_DEFAULT_SIZES);
	error_context = AllocSetContextCreate(TopMemoryContext, "strata_walredo error",
										  ALLOCSET_DEFAULT_SIZES);
	walredo_io_init();
	walredo_apply_init();

	for (int rmid = 0; rmid <= RM_MAX_BUILTIN_ID; rmid++)
		if (RmgrIdExists(rmid) && GetRmgr(rmid).rm_startup != NULL)
			GetRmgr(rmid).rm_startup();

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = walredo_emit_log_hook;

	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		ErrorData  *edata;

		error_context_stack = NULL;
		walredo_in_redo = false;
		HOLD_INTERRUPTS();

		MemoryContextSwitchTo(error_context);
		edata = CopyErrorData();
		FlushErrorState();

		LWLockReleaseAll();
		AbortBufferIO();
		UnlockBuffers();
		ReleaseAuxProcessResources(false);
		/* nothing is pinned any more: throw away what the request touched */
		walredo_cleanup_after_error();

		walredo_stats.errors++;
		send_error_reply(edata);
		FreeErrorData(edata);
		MemoryContextReset(error_context);
		panic_was_caught = false;
		current_record_index = WALREDO_NO_RECORD;
		RESUME_INTERRUPTS();
	}
	PG_exception_stack = &local_sigjmp_buf;

	if (walredo_stats.requests == 0)
		send_hello();

	for (;;)
	{
		WalRedoCursor cursor;

		MemoryContextSwitchTo(request_context);
		MemoryContextReset(request_context);

		if (!walredo_read_frame(&frame))
		{
			walredo_flush_output();
			proc_exit(0);
		}
		current_request_id = frame.request_id;
		current_record_index = WALREDO_NO_RECORD;
		walredo_stats.requests++;
		walredo_cursor_init(&cursor, frame.payload, frame.payload_len);

		switch (frame.type)
		{
			case WALREDO_MSG_APPLY:
				handle_apply(&cursor);
				break;
			case WALREDO_MSG_MASK:
				handle_mask(&cursor);
				break;
			case WALREDO_MSG_STATS:
				handle_stats(&cursor);
				break;
			case WALREDO_MSG_TEST:
				handle_test_hook(&cursor);
				break;
			default:
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("strata_walredo: unknown request type 0x%02X",
								(unsigned char) frame.type)));
		}
	}
}

static void
walredo_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	walredo_main_loop();
}

void
_PG_init(void)
{
	int			running_version;

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomBoolVariable("strata_walredo.enable",
							 "Turns this single-user backend into strata's WAL redo helper.",
							 NULL, &walredo_enable, false,
							 PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("strata_walredo.test_hooks",
							 "Accepts fault-injection requests (tests only).",
							 NULL, &walredo_test_hooks, false,
							 PGC_POSTMASTER, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("strata_walredo");

	if (!walredo_enable)
		return;
	if (IsPostmasterEnvironment || IsUnderPostmaster)
		ereport(FATAL,
				(errmsg("strata_walredo.enable=on is only valid in a single-user backend (postgres --single)")));

	running_version = atoi(GetConfigOption("server_version_num", false, false));
	if (running_version != WALREDO_BUILT_VERSION_NUM)
		ereport(FATAL,
				(errmsg("strata_walredo was built for PostgreSQL %d.%d (server_version_num %d) but is running in PostgreSQL %s (%d)",
						WALREDO_BUILT_VERSION_NUM / 10000, WALREDO_BUILT_VERSION_NUM % 100,
						WALREDO_BUILT_VERSION_NUM,
						GetConfigOption("server_version", false, false), running_version),
				 errhint("Rebuild it against this server: make -C walredo PG_CONFIG=<this server's pg_config>.")));

	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = walredo_shmem_startup;
}
