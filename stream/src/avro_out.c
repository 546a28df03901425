/*
 * avro_out.c - Avro object container files (ch/avro_out.h).
 *
 * Design notes
 * - Records go into a block buffer; a block of 256 KiB or more is written with its
 *   record count, its size and the sync marker, so a reader can skip and check blocks.
 * - Codec null: the rows are floats that compress poorly, and gzip of the whole file
 *   (which featurize's readers read) is there for who wants it.
 */
#include "ch/avro_out.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_BYTES (256 * 1024)

struct ch_avro_out {
    FILE *out;
    unsigned char sync[16];
    ch_buf_t block, head;
    long count;
};

int ch_avro_put_long(ch_buf_t *b, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    unsigned char tmp[10];
    size_t n = 0;
    while (z >= 0x80) {
        tmp[n++] = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    tmp[n++] = (unsigned char)z;
    return ch_buf_append(b, tmp, n);
}

int ch_avro_put_float(ch_buf_t *b, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    unsigned char le[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                           (unsigned char)(u >> 24)};
    return ch_buf_append(b, le, 4);
}

int ch_avro_put_double(ch_buf_t *b, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    unsigned char le[8];
    for (int i = 0; i < 8; i++) {
        le[i] = (unsigned char)(u >> (8 * i));
    }
    return ch_buf_append(b, le, 8);
}

int ch_avro_put_bool(ch_buf_t *b, bool v) {
    unsigned char c = v ? 1 : 0;
    return ch_buf_append(b, &c, 1);
}

int ch_avro_put_string(ch_buf_t *b, const char *s, size_t n) {
    int r = ch_avro_put_long(b, (int64_t)n);
    return r ? r : ch_buf_append(b, s, n);
}

static int write_all(FILE *f, const void *p, size_t n) {
    return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -EIO;
}

int ch_avro_out_new(FILE *out, const char *schema_json, const unsigned char sync[16],
                    ch_avro_out_t **ret) {
    ch_avro_out_t *w = calloc(1, sizeof(*w));
    if (!w) {
        return -ENOMEM;
    }
    w->out = out;
    memcpy(w->sync, sync, 16);
    ch_buf_init(&w->block);
    ch_buf_init(&w->head);
    ch_buf_t *h = &w->head;
    int r = ch_buf_append(h, "Obj\x01", 4);
    r = r ? r : ch_avro_put_long(h, 2); /* a map block of two entries */
    r = r ? r : ch_avro_put_string(h, "avro.schema", 11);
    r = r ? r : ch_avro_put_string(h, schema_json, strlen(schema_json));
    r = r ? r : ch_avro_put_string(h, "avro.codec", 10);
    r = r ? r : ch_avro_put_string(h, "null", 4);
    r = r ? r : ch_avro_put_long(h, 0);
    r = r ? r : ch_buf_append(h, w->sync, 16);
    r = r ? r : write_all(out, h->data, h->len);
    if (r < 0) {
        ch_buf_done(&w->head);
        free(w);
        return r;
    }
    *ret = w;
    return 0;
}

ch_buf_t *ch_avro_out_record(ch_avro_out_t *w) { return &w->block; }

static int flush_block(ch_avro_out_t *w) {
    if (w->count == 0) {
        return 0;
    }
    w->head.len = 0;
    int r = ch_avro_put_long(&w->head, w->count);
    r = r ? r : ch_avro_put_long(&w->head, (int64_t)w->block.len);
    r = r ? r : write_all(w->out, w->head.data, w->head.len);
    r = r ? r : write_all(w->out, w->block.data, w->block.len);
    r = r ? r : write_all(w->out, w->sync, 16);
    w->block.len = 0;
    w->count = 0;
    return r;
}

int ch_avro_out_commit(ch_avro_out_t *w) {
    w->count++;
    return w->block.len >= BLOCK_BYTES ? flush_block(w) : 0;
}

int ch_avro_out_close(ch_avro_out_t *w) {
    if (!w) {
        return 0;
    }
    int r = flush_block(w);
    ch_buf_done(&w->block);
    ch_buf_done(&w->head);
    free(w);
    return r;
}
