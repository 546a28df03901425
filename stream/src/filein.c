/*
 * filein.c - records of event files (ch/filein.h).
 *
 * Design notes
 * - Every file goes through zlib's gz reader, which reads gzip and plain bytes alike,
 *   so ".gz" needs no separate path and standard input may be either.
 * - CSV is parsed by libcsv (RFC 4180: quoted commas, quotes and newlines, CRLF), fed
 *   one line at a time so that each record knows the line it starts on; no trimming
 *   of spaces (they are data). A UTF-8 byte order mark before the header is dropped.
 * - An Avro container is read block by block (the container framing only: the
 *   records are decoded by the daemon's own decoder, which alone knows where one
 *   ends). Codecs null and deflate (zlib, raw); the sync marker after every block is
 *   checked, so a corrupt file stops with its block's position, never misreads.
 */
#include "ch/filein.h"

#include <csv.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "ch/codec.h"
#include "errbuf.h"

#define MAX_BLOCK_BYTES (1L << 30) /* an Avro block larger than this is corrupt */
#define MAX_HEADER_COLS 4096
#define READ_BYTES (256 * 1024)

struct ch_filein {
    char path[4096];
    ch_file_format_t fmt;
    gzFile gz;
    double size; /* of a regular file; < 0 unknown */
    char *line;  /* the line just read */
    size_t line_cap, line_len;
    unsigned char *rbuf; /* CSV, JSON Lines: read ahead */
    size_t rlen, rpos;
    bool reof;
    long line_no;
    bool eof;
    /* CSV */
    struct csv_parser csv;
    bool csv_on;
    ch_buf_t acc;     /* complete records, then the one being read */
    size_t *ends;     /* end offset of each complete record in acc */
    long *starts;     /* its first line */
    size_t n_ends, cap_ends, next_end, done_bytes;
    bool in_rec;
    long rec_line;
    int cb_err;
    char **header;
    size_t n_header;
    /* Avro */
    char *schema;
    bool deflate;
    unsigned char sync[16];
    ch_buf_t raw, block;
    long next_record;
};

int ch_file_format_parse(const char *s, ch_file_format_t *ret) {
    static const char *const names[] = {"csv", "jsonl", "avro"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *ret = (ch_file_format_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

static bool ends_with(const char *s, size_t n, const char *suffix) {
    size_t k = strlen(suffix);
    return n >= k && strncmp(s + n - k, suffix, k) == 0;
}

int ch_file_format_of(const char *path, ch_file_format_t *ret) {
    size_t n = strlen(path);
    if (ends_with(path, n, ".gz")) {
        n -= 3;
    }
    if (ends_with(path, n, ".csv")) {
        *ret = CH_FILE_CSV;
    } else if (ends_with(path, n, ".jsonl") || ends_with(path, n, ".ndjson") ||
               ends_with(path, n, ".json")) {
        *ret = CH_FILE_JSONL;
    } else if (ends_with(path, n, ".avro")) {
        *ret = CH_FILE_AVRO;
    } else {
        return -EINVAL;
    }
    return 0;
}

/* One line into f->line (with its '\n'; NUL bytes kept, so nothing of a line is lost
 * unseen). @returns 1, 0 at the end, -EIO, -ENOMEM. */
static int read_line(ch_filein_t *f, char *errbuf, size_t errlen) {
    size_t len = 0;
    for (;;) {
        if (f->rpos == f->rlen) {
            int n = f->reof ? 0 : gzread(f->gz, f->rbuf, READ_BYTES);
            if (n < 0) {
                int zerr = 0;
                const char *msg = gzerror(f->gz, &zerr);
                return fail(errbuf, errlen, -EIO, "%s:%ld: %s", f->path, f->line_no + 1, msg);
            }
            if (n == 0) {
                f->reof = true;
                break;
            }
            f->rlen = (size_t)n;
            f->rpos = 0;
        }
        const unsigned char *p = f->rbuf + f->rpos;
        const unsigned char *nl = memchr(p, '\n', f->rlen - f->rpos);
        size_t take = nl ? (size_t)(nl - p) + 1 : f->rlen - f->rpos;
        if (f->line_cap < len + take + 1) {
            size_t cap = f->line_cap ? f->line_cap : 65536;
            while (cap < len + take + 1) {
                cap *= 2;
            }
            char *nline = realloc(f->line, cap);
            if (!nline) {
                return -ENOMEM;
            }
            f->line = nline;
            f->line_cap = cap;
        }
        memcpy(f->line + len, p, take);
        len += take;
        f->rpos += take;
        if (nl) {
            break;
        }
    }
    f->line_len = len;
    if (len == 0) {
        return 0;
    }
    f->line[len] = '\0';
    f->line_no++;
    return 1;
}

/* libcsv's callbacks: a field, the end of a record. */
static void on_field(void *s, size_t len, void *data) {
    ch_filein_t *f = data;
    if (!f->in_rec) {
        f->in_rec = true;
        f->rec_line = f->line_no;
    }
    uint32_t n = (uint32_t)len;
    if (len > UINT32_MAX || ch_buf_append(&f->acc, &n, sizeof(n)) < 0 ||
        ch_buf_append(&f->acc, s ? s : "", len) < 0 || ch_buf_append(&f->acc, "", 1) < 0) {
        f->cb_err = -ENOMEM;
    }
}

static void on_record(int c, void *data) {
    (void)c;
    ch_filein_t *f = data;
    if (!f->in_rec) {
        return; /* an empty line */
    }
    f->in_rec = false;
    if (f->n_ends == f->cap_ends) {
        size_t cap = f->cap_ends ? 2 * f->cap_ends : 16;
        size_t *ne = realloc(f->ends, cap * sizeof(*ne));
        long *ns = ne ? realloc(f->starts, cap * sizeof(*ns)) : NULL;
        if (ne) {
            f->ends = ne;
        }
        if (!ns) {
            f->cb_err = -ENOMEM;
            return;
        }
        f->starts = ns;
        f->cap_ends = cap;
    }
    f->starts[f->n_ends] = f->rec_line;
    f->ends[f->n_ends++] = f->acc.len;
}

static int space_is_data(unsigned char c) {
    (void)c;
    return 0;
}

/* The next CSV record into *ret. @returns 1, 0 at the end, < 0. */
static int next_csv(ch_filein_t *f, ch_file_rec_t *ret, char *errbuf, size_t errlen) {
    if (f->next_end == f->n_ends) { /* keep only the record being read */
        size_t keep = f->acc.len - f->done_bytes;
        if (keep) {
            memmove(f->acc.data, f->acc.data + f->done_bytes, keep);
        }
        f->acc.len = keep;
        f->done_bytes = 0;
        f->n_ends = f->next_end = 0;
    }
    while (f->next_end == f->n_ends && !f->eof) {
        int r = read_line(f, errbuf, errlen);
        if (r < 0) {
            return r;
        }
        size_t n = 0;
        const char *p = f->line;
        if (r == 0) {
            f->eof = true;
            n = (size_t)csv_fini(&f->csv, on_field, on_record, f);
        } else {
            size_t len = f->line_len;
            if (f->line_no == 1 && len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
                p += 3;
                len -= 3;
            }
            n = csv_parse(&f->csv, p, len, on_field, on_record, f) == len ? 0 : 1;
        }
        if (f->cb_err) {
            return f->cb_err;
        }
        if (n || csv_error(&f->csv) != CSV_SUCCESS) {
            return fail(errbuf, errlen, -EBADMSG, "%s:%ld: malformed CSV (%s)", f->path,
                        f->in_rec ? f->rec_line : f->line_no, csv_strerror(csv_error(&f->csv)));
        }
    }
    if (f->next_end == f->n_ends) {
        return 0;
    }
    size_t from = f->done_bytes, to = f->ends[f->next_end];
    *ret = (ch_file_rec_t){f->acc.data + from, to - from, f->starts[f->next_end], 1};
    f->done_bytes = to;
    f->next_end++;
    return 1;
}

size_t ch_filein_cells(const unsigned char *data, size_t len, const char **cells, size_t *lens,
                       size_t max) {
    size_t n = 0, o = 0;
    while (o + 4 <= len) {
        uint32_t k;
        memcpy(&k, data + o, 4);
        if (n < max) {
            cells[n] = (const char *)data + o + 4;
            lens[n] = k;
        }
        n++;
        o += 4 + (size_t)k + 1;
    }
    return n;
}

/* ---------------------------------------------------------------- Avro containers */

static int read_exact(ch_filein_t *f, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        unsigned chunk = n - got > (1u << 30) ? 1u << 30 : (unsigned)(n - got);
        int r = gzread(f->gz, (char *)buf + got, chunk);
        if (r <= 0) {
            return -EIO;
        }
        got += (size_t)r;
    }
    return 0;
}

/* An Avro long (zig-zag varint). @returns 0, -EIO (the end), -EBADMSG (too long). */
static int read_long(ch_filein_t *f, int64_t *ret) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        int c = gzgetc(f->gz);
        if (c < 0) {
            return -EIO;
        }
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *ret = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return -EBADMSG;
}

static int read_bytes(ch_filein_t *f, char **ret) {
    int64_t n;
    if (read_long(f, &n) < 0 || n < 0 || n > MAX_BLOCK_BYTES) {
        return -EBADMSG;
    }
    char *s = malloc((size_t)n + 1);
    if (!s) {
        return -ENOMEM;
    }
    if (read_exact(f, s, (size_t)n) < 0) {
        free(s);
        return -EBADMSG;
    }
    s[n] = '\0';
    *ret = s;
    return 0;
}

static int open_avro(ch_filein_t *f, char *errbuf, size_t errlen) {
    unsigned char magic[4];
    if (read_exact(f, magic, 4) < 0 || memcmp(magic, "Obj\x01", 4) != 0) {
        return fail(errbuf, errlen, -EINVAL, "%s: not an Avro object container file", f->path);
    }
    char *codec = NULL;
    int r = 0;
    for (;;) {
        int64_t count, size;
        if (read_long(f, &count) < 0) {
            r = -EBADMSG;
            break;
        }
        if (count == 0) {
            break;
        }
        if (count < 0) { /* a negative count: its absolute value, then the block's size */
            if (count == INT64_MIN || read_long(f, &size) < 0) {
                r = -EBADMSG;
                break;
            }
            count = -count;
        }
        for (int64_t i = 0; i < count && r == 0; i++) {
            char *k = NULL, *v = NULL;
            if ((r = read_bytes(f, &k)) == 0 && (r = read_bytes(f, &v)) == 0) {
                if (strcmp(k, "avro.schema") == 0 && !f->schema) {
                    f->schema = v;
                    v = NULL;
                } else if (strcmp(k, "avro.codec") == 0 && !codec) {
                    codec = v;
                    v = NULL;
                }
            }
            free(k);
            free(v);
        }
        if (r < 0) {
            break;
        }
    }
    if (r == 0 && read_exact(f, f->sync, 16) < 0) {
        r = -EBADMSG;
    }
    if (r == -ENOMEM) {
        free(codec);
        return r;
    }
    if (r < 0 || !f->schema) {
        free(codec);
        return fail(errbuf, errlen, -EINVAL, "%s: %s", f->path,
                    r < 0 ? "a truncated or corrupt Avro container header"
                          : "the Avro container header has no avro.schema");
    }
    if (codec && strcmp(codec, "null") != 0 && strcmp(codec, "deflate") != 0) {
        r = fail(errbuf, errlen, -EINVAL,
                 "%s: Avro codec '%s' is not supported (write the file with codec null or "
                 "deflate)",
                 f->path, codec);
    }
    f->deflate = codec && strcmp(codec, "deflate") == 0;
    free(codec);
    f->next_record = 1;
    return r;
}

static int inflate_block(ch_filein_t *f) {
    z_stream z = {0};
    if (inflateInit2(&z, -15) != Z_OK) {
        return -ENOMEM;
    }
    f->block.len = 0;
    z.next_in = f->raw.data;
    z.avail_in = (uInt)f->raw.len;
    int zr = Z_OK;
    while (zr == Z_OK) {
        if (f->block.cap - f->block.len < 65536) {
            size_t cap = f->block.cap ? 2 * f->block.cap : 4 * f->raw.len + 65536;
            if (cap > 4 * (size_t)MAX_BLOCK_BYTES) {
                inflateEnd(&z);
                return -EBADMSG;
            }
            unsigned char *nb = realloc(f->block.data, cap);
            if (!nb) {
                inflateEnd(&z);
                return -ENOMEM;
            }
            f->block.data = nb;
            f->block.cap = cap;
        }
        z.next_out = f->block.data + f->block.len;
        z.avail_out = (uInt)(f->block.cap - f->block.len > (1u << 30) ? 1u << 30
                                                                       : f->block.cap - f->block.len);
        uInt before = z.avail_out;
        zr = inflate(&z, Z_NO_FLUSH);
        f->block.len += before - z.avail_out;
        if (zr == Z_BUF_ERROR && z.avail_out == 0) {
            zr = Z_OK; /* room was short: more */
        }
    }
    inflateEnd(&z);
    return zr == Z_STREAM_END ? 0 : -EBADMSG;
}

static int next_avro(ch_filein_t *f, ch_file_rec_t *ret, char *errbuf, size_t errlen) {
    int c = gzgetc(f->gz);
    if (c < 0) {
        return 0; /* the end, between blocks */
    }
    gzungetc(c, f->gz);
    int64_t count, size;
    if (read_long(f, &count) < 0 || read_long(f, &size) < 0 || count < 0 || size < 0 ||
        size > MAX_BLOCK_BYTES) {
        return fail(errbuf, errlen, -EBADMSG, "%s: record %ld: a corrupt Avro block header",
                    f->path, f->next_record);
    }
    f->raw.len = 0;
    if (f->raw.cap < (size_t)size) {
        unsigned char *nb = realloc(f->raw.data, (size_t)size);
        if (!nb) {
            return -ENOMEM;
        }
        f->raw.data = nb;
        f->raw.cap = (size_t)size;
    }
    unsigned char sync[16];
    if ((size && read_exact(f, f->raw.data, (size_t)size) < 0) || read_exact(f, sync, 16) < 0) {
        return fail(errbuf, errlen, -EBADMSG, "%s: record %ld: the Avro block is truncated",
                    f->path, f->next_record);
    }
    f->raw.len = (size_t)size;
    if (memcmp(sync, f->sync, 16) != 0) {
        return fail(errbuf, errlen, -EBADMSG,
                    "%s: record %ld: the Avro block's sync marker does not match the header's",
                    f->path, f->next_record);
    }
    const ch_buf_t *b = &f->raw;
    if (f->deflate) {
        int r = inflate_block(f);
        if (r < 0) {
            return r == -ENOMEM ? r
                                : fail(errbuf, errlen, -EBADMSG,
                                       "%s: record %ld: the Avro block does not inflate", f->path,
                                       f->next_record);
        }
        b = &f->block;
    }
    *ret = (ch_file_rec_t){b->data, b->len, f->next_record, (long)count};
    f->next_record += (long)count;
    return 1;
}

/* ---------------------------------------------------------------- common */

int ch_filein_open(const char *path, ch_file_format_t fmt, ch_filein_t **ret, char *errbuf,
                   size_t errlen) {
    ch_filein_t *f = calloc(1, sizeof(*f));
    if (!f) {
        return -ENOMEM;
    }
    snprintf(f->path, sizeof(f->path), "%s", path);
    f->fmt = fmt;
    f->size = -1;
    bool std_in = strcmp(path, "-") == 0;
    int fd = std_in ? dup(STDIN_FILENO) : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(f);
        return fail(errbuf, errlen, -e, "%s: %s", std_in ? "standard input" : path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        f->size = (double)st.st_size;
    }
    if (!(f->gz = gzdopen(fd, "rb"))) {
        close(fd);
        free(f);
        return -ENOMEM;
    }
    gzbuffer(f->gz, 1 << 18);
    if (fmt != CH_FILE_AVRO && !(f->rbuf = malloc(READ_BYTES))) {
        gzclose(f->gz);
        free(f);
        return -ENOMEM;
    }
    ch_buf_init(&f->acc);
    ch_buf_init(&f->raw);
    ch_buf_init(&f->block);
    int r = 0;
    if (fmt == CH_FILE_AVRO) {
        r = open_avro(f, errbuf, errlen);
    } else if (fmt == CH_FILE_CSV) {
        if (csv_init(&f->csv, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0) {
            r = -ENOMEM;
        } else {
            f->csv_on = true;
            csv_set_space_func(&f->csv, space_is_data);
            ch_file_rec_t h;
            r = next_csv(f, &h, errbuf, errlen);
            const char *cells[MAX_HEADER_COLS];
            size_t lens[MAX_HEADER_COLS];
            size_t n = r == 1 ? ch_filein_cells(h.data, h.len, cells, lens, MAX_HEADER_COLS) : 0;
            if (r == 0) {
                r = fail(errbuf, errlen, -EINVAL, "%s: empty (a CSV file starts with a header)",
                         path);
            } else if (r == 1 && n > MAX_HEADER_COLS) {
                r = fail(errbuf, errlen, -E2BIG, "%s: %zu columns (at most %d)", path, n,
                         MAX_HEADER_COLS);
            } else if (r == 1 && !(f->header = calloc(n ? n : 1, sizeof(char *)))) {
                r = -ENOMEM;
            }
            for (size_t i = 0; r == 1 && i < n; i++) {
                if (!(f->header[f->n_header++] = strdup(cells[i]))) {
                    r = -ENOMEM;
                }
            }
            r = r == 1 ? 0 : r;
        }
    }
    if (r < 0) {
        ch_filein_close(f);
        return r;
    }
    *ret = f;
    return 0;
}

ch_filein_t *ch_filein_close(ch_filein_t *f) {
    if (!f) {
        return NULL;
    }
    if (f->gz) {
        gzclose(f->gz);
    }
    if (f->csv_on) {
        csv_free(&f->csv);
    }
    for (size_t i = 0; i < f->n_header; i++) {
        free(f->header[i]);
    }
    free(f->header);
    free(f->line);
    free(f->rbuf);
    free(f->ends);
    free(f->starts);
    free(f->schema);
    ch_buf_done(&f->acc);
    ch_buf_done(&f->raw);
    ch_buf_done(&f->block);
    free(f);
    return NULL;
}

int ch_filein_next(ch_filein_t *f, ch_file_rec_t *ret, char *errbuf, size_t errlen) {
    if (f->fmt == CH_FILE_CSV) {
        return next_csv(f, ret, errbuf, errlen);
    }
    if (f->fmt == CH_FILE_AVRO) {
        return next_avro(f, ret, errbuf, errlen);
    }
    for (;;) { /* JSON Lines: skip blank lines */
        int r = read_line(f, errbuf, errlen);
        if (r <= 0) {
            return r;
        }
        size_t n = f->line_len;
        while (n && (f->line[n - 1] == '\n' || f->line[n - 1] == '\r')) {
            n--;
        }
        size_t i = 0;
        while (i < n && (f->line[i] == ' ' || f->line[i] == '\t')) {
            i++;
        }
        if (i < n) {
            *ret = (ch_file_rec_t){(const unsigned char *)f->line, n, f->line_no, 1};
            return 1;
        }
    }
}

const char *const *ch_filein_header(const ch_filein_t *f, size_t *ret_n) {
    *ret_n = f->n_header;
    return f->fmt == CH_FILE_CSV ? (const char *const *)f->header : NULL;
}

const char *ch_filein_schema(const ch_filein_t *f) { return f->schema; }

const char *ch_filein_path(const ch_filein_t *f) { return f->path; }

double ch_filein_progress(const ch_filein_t *f) {
    if (f->size <= 0) {
        return -1;
    }
    double at = (double)gzoffset(f->gz) / f->size;
    return at > 1 ? 1 : at;
}
