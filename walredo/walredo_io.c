/*-------------------------------------------------------------------------
 *
 * walredo_io.c
 *	  Framing of the walredo protocol over stdin/stdout (see walredo.h).
 *
 * Owns the process's protocol channel.  At start-up the original stdout is
 * moved to a private descriptor and fd 1 is pointed at stderr, so nothing
 * PostgreSQL might print (a stray NOTICE in single-user mode, a library's
 * printf) can ever interleave with protocol bytes.
 *
 * Input is read through a 256 KiB buffer, so one read(2) takes a whole batch
 * of pipelined requests; a frame that lies wholly in it is handled in place,
 * otherwise its payload is assembled in a buffer in TopMemoryContext that
 * grows to the largest frame seen and shrinks back after an unusually large
 * one.  Replies are appended to an output buffer that is flushed when the
 * helper is about to block waiting for input or holds eight pages' worth: a
 * pipelining client gets many replies per wake-up.  The channel is what the
 * client made -- Node's child_process gives a Unix socket pair, whose default
 * buffer (net.core.wmem_default, ~208 KiB) holds a batch of 16 single-page
 * requests -- so each batch passes in one system call.  A frame is always
 * read completely before it is handled, so an ERROR while handling it never
 * desynchronizes the stream.
 *
 * I/O failures are not recoverable (the client is gone or broke the
 * protocol): they end the process with a message on stderr.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "storage/ipc.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "walredo.h"

/*
 * read(2) granularity: one read brings a whole batch of pipelined requests
 * (the client's default depth of 16 single-page requests is ~135 KiB).
 */
#define INPUT_CHUNK_BYTES (256 * 1024)

/*
 * Flush replies once this much is pending even if more input is waiting:
 * eight page replies.  With more than eight requests in flight the client
 * then works on the first replies while the rest are replayed -- both
 * processes busy at once instead of taking turns -- for one more write(2)
 * per eight replies.
 */
#define OUTPUT_FLUSH_BYTES (64 * 1024)

/* a payload buffer grown past this is released after the frame is done */
#define PAYLOAD_KEEP_BYTES (4 * 1024 * 1024)

static int	protocol_out_fd = -1;

static char input_chunk[INPUT_CHUNK_BYTES];
static size_t input_len = 0;
static size_t input_pos = 0;

static char *payload_buf = NULL;
static size_t payload_cap = 0;

static char *output_buf = NULL;
static size_t output_len = 0;
static size_t output_cap = 0;

void
walredo_io_init(void)
{
	protocol_out_fd = dup(STDOUT_FILENO);
	if (protocol_out_fd < 0)
		ereport(FATAL, (errmsg("strata_walredo: could not duplicate stdout: %m")));
	if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0)
		ereport(FATAL, (errmsg("strata_walredo: could not redirect stdout: %m")));

	output_cap = OUTPUT_FLUSH_BYTES + 64 * 1024;
	output_buf = MemoryContextAlloc(TopMemoryContext, output_cap);
}

static void
write_all(const char *p, size_t len)
{
	while (len > 0)
	{
		ssize_t		n = write(protocol_out_fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			/* the client is gone: nobody is left to report to */
			write_stderr("strata_walredo: could not write to the client: %m\n");
			proc_exit(1);
		}
		p += n;
		len -= (size_t) n;
	}
}

void
walredo_flush_output(void)
{
	if (output_len > 0)
	{
		write_all(output_buf, output_len);
		output_len = 0;
	}
}

/*
 * Appends one frame to the output buffer.  Payloads are at most a page or a
 * short text, so the buffer only grows past its initial size for replies
 * larger than OUTPUT_FLUSH_BYTES, which do not exist today.
 */
void
walredo_send_frame(char type, uint32 request_id, const char *payload, uint32 payload_len)
{
	uint32		length = WALREDO_FRAME_MIN_LENGTH + payload_len;
	size_t		need = WALREDO_FRAME_HEADER_BYTES + (size_t) payload_len;

	if (output_len + need > output_cap)
	{
		walredo_flush_output();
		if (need > output_cap)
		{
			output_buf = repalloc(output_buf, need);
			output_cap = need;
		}
	}
	memcpy(output_buf + output_len, &length, 4);
	output_buf[output_len + 4] = type;
	memcpy(output_buf + output_len + 5, &request_id, 4);
	if (payload_len > 0)
		memcpy(output_buf + output_len + WALREDO_FRAME_HEADER_BYTES, payload, payload_len);
	output_len += need;
	if (output_len >= OUTPUT_FLUSH_BYTES)
		walredo_flush_output();
}

/*
 * Copies up to 'count' input bytes into dst; returns how many arrived before
 * EOF.  Pending replies are flushed before blocking, never while more input
 * is already buffered.
 */
static size_t
read_input(char *dst, size_t count)
{
	size_t		done = 0;

	while (done < count)
	{
		size_t		n;

		if (input_pos == input_len)
		{
			ssize_t		r;

			walredo_flush_output();
			r = read(STDIN_FILENO, input_chunk, sizeof(input_chunk));
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
			{
				write_stderr("strata_walredo: could not read from the client: %m\n");
				proc_exit(1);
			}
			if (r == 0)
				break;
			input_len = (size_t) r;
			input_pos = 0;
		}
		n = Min(count - done, input_len - input_pos);
		memcpy(dst + done, input_chunk + input_pos, n);
		input_pos += n;
		done += n;
	}
	return done;
}

/*
 * Reads the next whole frame.  Returns false on EOF at a frame boundary (the
 * client's orderly shutdown).  The payload stays valid until the next call;
 * it may point into the input buffer, so it is read-only and unaligned.
 */
bool
walredo_read_frame(WalRedoFrame *frame)
{
	char		header[WALREDO_FRAME_HEADER_BYTES];
	size_t		got;
	uint32		length;
	uint32		payload_len;

	if (payload_cap > PAYLOAD_KEEP_BYTES)
	{
		pfree(payload_buf);
		payload_buf = NULL;
		payload_cap = 0;
	}

	got = read_input(header, sizeof(header));
	if (got == 0)
		return false;
	if (got != sizeof(header))
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("strata_walredo: input ended inside a frame header (%zu of %d bytes)",
						got, WALREDO_FRAME_HEADER_BYTES)));

	memcpy(&length, header, 4);
	if (length < WALREDO_FRAME_MIN_LENGTH || length > WALREDO_MAX_FRAME_BYTES)
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("strata_walredo: frame length %u outside [%d, %d]; stream is out of sync",
						length, WALREDO_FRAME_MIN_LENGTH, WALREDO_MAX_FRAME_BYTES)));
	payload_len = length - WALREDO_FRAME_MIN_LENGTH;
	frame->type = header[4];
	memcpy(&frame->request_id, header + 5, 4);
	frame->payload_len = payload_len;

	/*
	 * The common case, a frame read whole with its batch: the payload is used
	 * where it lies (handlers copy what they keep; the input buffer is only
	 * refilled by the next call).
	 */
	if (input_len - input_pos >= payload_len)
	{
		frame->payload = input_chunk + input_pos;
		input_pos += payload_len;
		return true;
	}

	if (payload_len > payload_cap || payload_buf == NULL)
	{
		size_t		newcap = Max((size_t) payload_len, (size_t) 16384);

		if (payload_buf)
			pfree(payload_buf);
		payload_buf = MemoryContextAllocHuge(TopMemoryContext, newcap);
		payload_cap = newcap;
	}
	got = read_input(payload_buf, payload_len);
	if (got != payload_len)
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("strata_walredo: input ended inside a frame payload (%zu of %u bytes)",
						got, payload_len)));

	frame->payload = payload_buf;
	return true;
}

/* ---- bounds-checked payload reader ---- */

void
walredo_cursor_init(WalRedoCursor *c, const char *data, uint32 len)
{
	c->data = data;
	c->len = len;
	c->pos = 0;
}

const char *
walredo_get_bytes(WalRedoCursor *c, uint32 n)
{
	const char *p;

	if (n > c->len - c->pos)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("strata_walredo: request payload too short: need %u bytes at offset %u, have %u",
						n, c->pos, c->len - c->pos)));
	p = c->data + c->pos;
	c->pos += n;
	return p;
}

uint8
walredo_get_u8(WalRedoCursor *c)
{
	return (uint8) *walredo_get_bytes(c, 1);
}

uint16
walredo_get_u16(WalRedoCursor *c)
{
	uint16		v;

	memcpy(&v, walredo_get_bytes(c, 2), 2);
	return v;
}

uint32
walredo_get_u32(WalRedoCursor *c)
{
	uint32		v;

	memcpy(&v, walredo_get_bytes(c, 4), 4);
	return v;
}

uint64
walredo_get_u64(WalRedoCursor *c)
{
	uint64		v;

	memcpy(&v, walredo_get_bytes(c, 8), 8);
	return v;
}

void
walredo_expect_end(WalRedoCursor *c)
{
	if (c->pos != c->len)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("strata_walredo: %u unexpected bytes after the request payload",
						c->len - c->pos)));
}
