/*
 * fuzz_files - cohortd featurize's readers on arbitrary files (stream/src/filein.c,
 * stream/src/csv_in.c, the codec's ch_decoder_decode_next): the first byte picks CSV,
 * JSON Lines or an Avro object container, the rest is the file. Every record is read
 * to the end or to a clean error; a CSV record's cells lie within it; a CSV row maps
 * through a decoder made from the file's own header; an Avro container's records decode
 * against cohortd's user_event reader schema with the file's writer schema, each
 * within its block.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ch/codec.h"
#include "ch/csv_in.h"
#include "ch/filein.h"

#define MAX_CELLS 64

static ch_mapping_t map;
static char reader[4096];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    ch_mapping_default(&map);
    snprintf(reader, sizeof(reader), "%s/conf/schemas/user_event.avsc", CH_FUZZ_SOURCE_DIR);
    return 0;
}

static void csv_rows(ch_filein_t *f) {
    size_t n_head = 0;
    const char *const *head = ch_filein_header(f, &n_head);
    ch_csv_decoder_t *d = NULL;
    char err[512];
    if (n_head > MAX_CELLS ||
        ch_csv_decoder_new(&map, head, n_head, "fuzz.csv", &d, err, sizeof(err)) < 0) {
        d = NULL; /* no user_id or ts column: the rows are still read */
    }
    ch_file_rec_t rec;
    while (ch_filein_next(f, &rec, err, sizeof(err)) == 1) {
        const char *cells[MAX_CELLS];
        size_t lens[MAX_CELLS];
        size_t n = ch_filein_cells(rec.data, rec.len, cells, lens, MAX_CELLS);
        for (size_t i = 0; i < n && i < MAX_CELLS; i++) {
            FUZZ_CHECK(cells[i] >= (const char *)rec.data &&
                       cells[i] + lens[i] < (const char *)rec.data + rec.len);
            FUZZ_CHECK(cells[i][lens[i]] == '\0');
            touch(cells[i], lens[i]);
        }
        ch_event_view_t ev;
        if (d && n <= MAX_CELLS && ch_csv_decoder_decode(d, cells, lens, n, &ev, err,
                                                          sizeof(err)) == 0) {
            touch(ev.user_id, ev.user_id_len);
            touch(ev.item, ev.item_len);
            touch(ev.attrs, ev.n_attrs * sizeof(*ev.attrs));
        }
    }
    ch_csv_decoder_free(d);
}

static void avro_blocks(ch_filein_t *f) {
    ch_decoder_t *d = NULL;
    char err[512];
    const char *schema = ch_filein_schema(f);
    if (ch_decoder_new(NULL, reader, CH_FRAMING_CONFLUENT, NULL, &map, &d, err, sizeof(err)) <
        0) {
        abort(); /* the reader schema is the repository's own */
    }
    if (ch_decoder_add_schema(d, 1, schema, strlen(schema), NULL, err, sizeof(err)) == 0) {
        ch_file_rec_t rec;
        while (ch_filein_next(f, &rec, err, sizeof(err)) == 1) {
            const unsigned char *p = rec.data;
            size_t left = rec.len;
            for (long k = 0; k < rec.count && k < 100000; k++) {
                ch_event_view_t ev;
                size_t used = 0;
                if (ch_decoder_decode_next(d, 1, p, left, &used, &ev, err, sizeof(err)) < 0) {
                    break;
                }
                FUZZ_CHECK(used > 0 && used <= left);
                touch(ev.user_id, ev.user_id_len);
                touch(ev.event_id, ev.event_id_len);
                p += used;
                left -= used;
                ch_decoder_release(d);
            }
        }
    }
    ch_decoder_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    ch_file_format_t fmt = (ch_file_format_t)(data[0] % 3);
    int fd = memfd_create("fuzz", 0);
    if (fd < 0 || (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1))) {
        abort();
    }
    char path[64], err[512];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ch_filein_t *f = NULL;
    if (ch_filein_open(path, fmt, &f, err, sizeof(err)) == 0) {
        if (fmt == CH_FILE_CSV) {
            csv_rows(f);
        } else if (fmt == CH_FILE_AVRO) {
            avro_blocks(f);
        } else {
            ch_file_rec_t rec;
            while (ch_filein_next(f, &rec, err, sizeof(err)) == 1) {
                touch(rec.data, rec.len);
            }
        }
        ch_filein_close(f);
    }
    close(fd);
    return 0;
}
