/*
 * test_filein.c - event files: CSV to RFC 4180 (quoted commas, quotes and newlines,
 * CRLF, a byte order mark, blank lines, a malformed quote with its line), JSON Lines
 * lines, gzip read whatever the name, Avro containers refused when they are not one or
 * are cut short, and the CSV row decoder's mapping by column names.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "ch/csv_in.h"
#include "ch/filein.h"

static char path[64];

static const char *write_file(const char *text, size_t n) {
    snprintf(path, sizeof(path), "/tmp/ch-filein-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

static void expect_cells(ch_filein_t *f, long line, size_t n, const char *const *want) {
    ch_file_rec_t rec;
    char err[256];
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 1);
    assert_int_equal(rec.line, line);
    const char *cells[8];
    size_t lens[8];
    assert_int_equal(ch_filein_cells(rec.data, rec.len, cells, lens, 8), n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(lens[i], strlen(want[i]));
        assert_memory_equal(cells[i], want[i], lens[i]);
    }
}

static void csv_rfc4180(void **state) {
    (void)state;
    static const char text[] = "\xEF\xBB\xBFuser_id,ts,note\r\n"
                               "u1,1000,\"a, b\"\r\n"
                               "\r\n"
                               "u2,2000,\"say \"\"hi\"\"\"\r\n"
                               "u3,3000,\"two\r\nlines\"\r\n"
                               " u4 ,4000,\n"
                               "u5,5000,last";
    const char *p = write_file(text, sizeof(text) - 1);
    ch_filein_t *f = NULL;
    char err[256];
    assert_int_equal(ch_filein_open(p, CH_FILE_CSV, &f, err, sizeof(err)), 0);
    size_t n = 0;
    const char *const *h = ch_filein_header(f, &n);
    assert_int_equal(n, 3);
    assert_string_equal(h[0], "user_id"); /* the byte order mark is gone */
    expect_cells(f, 2, 3, (const char *[]){"u1", "1000", "a, b"});
    expect_cells(f, 4, 3, (const char *[]){"u2", "2000", "say \"hi\""});
    expect_cells(f, 5, 3, (const char *[]){"u3", "3000", "two\r\nlines"});
    expect_cells(f, 7, 3, (const char *[]){" u4 ", "4000", ""}); /* spaces are data */
    expect_cells(f, 8, 3, (const char *[]){"u5", "5000", "last"}); /* no final newline */
    ch_file_rec_t rec;
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 0);
    ch_filein_close(f);
    unlink(p);
}

/* A NUL byte is data: the cell keeps it and what follows it on the line. */
static void nul_bytes_kept(void **state) {
    (void)state;
    static const char text[] = "a,b\nx\0y,z\n";
    const char *p = write_file(text, sizeof(text) - 1);
    ch_filein_t *f = NULL;
    char err[256];
    assert_int_equal(ch_filein_open(p, CH_FILE_CSV, &f, err, sizeof(err)), 0);
    ch_file_rec_t rec;
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 1);
    const char *cells[4];
    size_t lens[4];
    assert_int_equal(ch_filein_cells(rec.data, rec.len, cells, lens, 4), 2);
    assert_int_equal(lens[0], 3);
    assert_memory_equal(cells[0], "x\0y", 3);
    assert_int_equal(lens[1], 1);
    ch_filein_close(f);
    unlink(p);
    static const char jl[] = "{\"a\":\"x\0y\"}\n";
    p = write_file(jl, sizeof(jl) - 1);
    assert_int_equal(ch_filein_open(p, CH_FILE_JSONL, &f, err, sizeof(err)), 0);
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 1);
    assert_int_equal(rec.len, sizeof(jl) - 2); /* all but the newline */
    ch_filein_close(f);
    unlink(p);
}

static void csv_malformed_quote(void **state) {
    (void)state;
    static const char text[] = "a,b\n1,2\n3,x\"y\n";
    const char *p = write_file(text, sizeof(text) - 1);
    ch_filein_t *f = NULL;
    char err[256];
    assert_int_equal(ch_filein_open(p, CH_FILE_CSV, &f, err, sizeof(err)), 0);
    expect_cells(f, 2, 2, (const char *[]){"1", "2"});
    ch_file_rec_t rec;
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), -EBADMSG);
    char want[128];
    snprintf(want, sizeof(want), "%s:3: malformed CSV", p);
    assert_non_null(strstr(err, want));
    ch_filein_close(f);
    unlink(p);
}

static void csv_empty_and_missing(void **state) {
    (void)state;
    const char *p = write_file("", 0);
    ch_filein_t *f = NULL;
    char err[256];
    assert_int_equal(ch_filein_open(p, CH_FILE_CSV, &f, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "header"));
    unlink(p);
    assert_int_equal(ch_filein_open("/nonexistent/x.csv", CH_FILE_CSV, &f, err, sizeof(err)),
                     -ENOENT);
}

static void jsonl_gzip(void **state) {
    (void)state;
    snprintf(path, sizeof(path), "/tmp/ch-filein-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    gzFile gz = gzdopen(fd, "wb");
    assert_non_null(gz);
    gzputs(gz, "{\"a\":1}\n\n  \n{\"a\":2}\r\n");
    gzclose(gz);
    ch_filein_t *f = NULL;
    char err[256];
    assert_int_equal(ch_filein_open(path, CH_FILE_JSONL, &f, err, sizeof(err)), 0);
    ch_file_rec_t rec;
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 1);
    assert_int_equal(rec.line, 1);
    assert_int_equal(rec.len, 7);
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 1);
    assert_int_equal(rec.line, 4); /* blank lines skipped, counted */
    assert_memory_equal(rec.data, "{\"a\":2}", 7);
    assert_int_equal(rec.len, 7);
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), 0);
    ch_filein_close(f);
    unlink(path);
}

static void avro_refused(void **state) {
    (void)state;
    ch_filein_t *f = NULL;
    char err[256];
    const char *p = write_file("not avro", 8);
    assert_int_equal(ch_filein_open(p, CH_FILE_AVRO, &f, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not an Avro object container file"));
    unlink(p);
    /* a header cut short */
    static const char cut[] = "Obj\x01\x04\x16" "avro.schema";
    p = write_file(cut, sizeof(cut) - 1);
    assert_int_equal(ch_filein_open(p, CH_FILE_AVRO, &f, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "truncated or corrupt"));
    unlink(p);
    /* a complete header with codec snappy */
    char hdr[256];
    size_t n = 0;
    static const char schema[] = "\"long\"";
    memcpy(hdr, "Obj\x01", 4);
    n = 4;
    hdr[n++] = 4; /* 2 entries */
    hdr[n++] = 22;
    memcpy(hdr + n, "avro.schema", 11);
    n += 11;
    hdr[n++] = (char)(2 * (sizeof(schema) - 1));
    memcpy(hdr + n, schema, sizeof(schema) - 1);
    n += sizeof(schema) - 1;
    hdr[n++] = 20;
    memcpy(hdr + n, "avro.codec", 10);
    n += 10;
    hdr[n++] = 12;
    memcpy(hdr + n, "snappy", 6);
    n += 6;
    hdr[n++] = 0;
    memset(hdr + n, 7, 16);
    n += 16;
    p = write_file(hdr, n);
    assert_int_equal(ch_filein_open(p, CH_FILE_AVRO, &f, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "codec 'snappy' is not supported"));
    unlink(p);
    /* the same with codec null, then a block whose sync marker is wrong */
    memcpy(hdr + n - 16 - 1 - 6 - 1, "\x08" "null", 5);
    size_t m = n - 16 - 1 - 6 - 1 + 5;
    hdr[m++] = 0;
    memset(hdr + m, 7, 16);
    m += 16;
    hdr[m++] = 2; /* 1 record */
    hdr[m++] = 2; /* of 1 byte */
    hdr[m++] = 4; /* the long 2 */
    memset(hdr + m, 8, 16);
    m += 16;
    p = write_file(hdr, m);
    assert_int_equal(ch_filein_open(p, CH_FILE_AVRO, &f, err, sizeof(err)), 0);
    assert_string_equal(ch_filein_schema(f), schema);
    ch_file_rec_t rec;
    assert_int_equal(ch_filein_next(f, &rec, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "sync marker"));
    ch_filein_close(f);
    unlink(p);
}

static void formats_by_name(void **state) {
    (void)state;
    ch_file_format_t fmt;
    assert_int_equal(ch_file_format_of("a/b.csv.gz", &fmt), 0);
    assert_int_equal(fmt, CH_FILE_CSV);
    assert_int_equal(ch_file_format_of("x.ndjson", &fmt), 0);
    assert_int_equal(fmt, CH_FILE_JSONL);
    assert_int_equal(ch_file_format_of("x.avro", &fmt), 0);
    assert_int_equal(fmt, CH_FILE_AVRO);
    assert_int_equal(ch_file_format_of("x.txt", &fmt), -EINVAL);
    assert_int_equal(ch_file_format_of("-", &fmt), -EINVAL);
}

static void csv_mapping(void **state) {
    (void)state;
    ch_mapping_t map;
    ch_mapping_default(&map);
    snprintf(map.path[CH_ROLE_TS], sizeof(map.path[0]), "when");
    map.is_default[CH_ROLE_TS] = false;
    snprintf(map.path[CH_ROLE_AMOUNT], sizeof(map.path[0]), "price");
    map.is_default[CH_ROLE_AMOUNT] = false;
    assert_int_equal(ch_mapping_add_field(&map, "qty"), 0);
    const char *header[] = {"user_id", "when", "price", "qty", "attrs.lat", "type"};
    ch_csv_decoder_t *d = NULL;
    char err[512];
    assert_int_equal(ch_csv_decoder_new(&map, header, 6, "f.csv", &d, err, sizeof(err)), 0);
    const char *row[] = {"u1", "2019-10-01 00:00:01 UTC", "2.5", "", "48.5", ""};
    size_t lens[6];
    for (int i = 0; i < 6; i++) {
        lens[i] = strlen(row[i]);
    }
    ch_event_view_t ev;
    assert_int_equal(ch_csv_decoder_decode(d, row, lens, 6, &ev, err, sizeof(err)), 0);
    assert_int_equal(ev.ts_ms, 1569888001000LL);
    assert_true(ev.has_amount);
    assert_true(ev.amount == 2.5);
    assert_int_equal(ev.fields_present, 0); /* qty empty: absent */
    assert_null(ev.type);                   /* empty: absent */
    assert_int_equal(ev.n_attrs, 1);
    assert_memory_equal(ev.attrs[0].key, "lat", 3);
    assert_true(ev.attrs[0].value == 48.5);
    row[2] = "2.5x";
    lens[2] = 4;
    assert_int_equal(ch_csv_decoder_decode(d, row, lens, 6, &ev, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "column 3 (price): '2.5x' is not a number"));
    assert_int_equal(ch_csv_decoder_decode(d, row, lens, 5, &ev, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "5 columns where the header has 6"));
    ch_csv_decoder_free(d);
    /* a mapped column the header lacks: named, with the header listed */
    const char *short_header[] = {"user_id", "ts"};
    assert_int_equal(ch_csv_decoder_new(&map, short_header, 2, "f.csv", &d, err, sizeof(err)),
                     -EPROTO);
    assert_non_null(strstr(err, "f.csv: no column 'when' (input.map.ts); the header has: "
                                "user_id, ts"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(csv_rfc4180),      cmocka_unit_test(nul_bytes_kept),
        cmocka_unit_test(csv_malformed_quote),
        cmocka_unit_test(csv_empty_and_missing), cmocka_unit_test(jsonl_gzip),
        cmocka_unit_test(avro_refused),     cmocka_unit_test(formats_by_name),
        cmocka_unit_test(csv_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
