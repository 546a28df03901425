/*
 * fuzz_state - the state decoders (daemon/src/staterec.c, daemon/src/snapfile.c): the
 * input is read both as one changelog record and as a snapshot file of partition 0 of
 * 4 for the shipped configuration's feature layout. Each user record a snapshot yields
 * is decoded as restore does. A damaged file must be refused with a reason, never read
 * past.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ch/features.h"
#include "config.h"
#include "snapfile.h"
#include "staterec.h"

static char dir[64];

static void cleanup(void) {
    char file[128];
    snprintf(file, sizeof(file), "%s/0.snap", dir);
    unlink(file);
    rmdir(dir);
}
static uint64_t layout;
static size_t state_len;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    ch_config_t cfg;
    ch_features_t *fs = NULL;
    char err[512];
    if (ch_config_init(&cfg) < 0 ||
        ch_config_load(&cfg, CH_FUZZ_SOURCE_DIR "/conf/cohortd.conf", err, sizeof(err)) < 0 ||
        ch_config_features(&cfg, &fs, err, sizeof(err)) < 0 ||
        ch_staterec_layout(fs, cfg.features_half_life_ms, &layout) < 0) {
        fprintf(stderr, "fuzz_state: %s\n", err);
        exit(1);
    }
    state_len = ch_features_state_len(fs);
    ch_features_free(fs);
    ch_config_done(&cfg);
    snprintf(dir, sizeof(dir), "/tmp/fuzz_state_%d", (int)getpid());
    atexit(cleanup);
    return 0;
}

static void decode(const void *rec, size_t len) {
    ch_staterec_t s;
    if (ch_staterec_decode(rec, len, layout, state_len, &s) == 0) {
        FUZZ_CHECK(s.state_len == state_len &&
                   s.state == (const unsigned char *)rec + len - 8 * state_len);
        (void)touch(s.state, 8 * s.state_len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    decode(data, size);
    char file[128];
    snprintf(file, sizeof(file), "%s/0.snap", dir);
    FILE *f = NULL;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        abort();
    }
    f = fopen(file, "we");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        abort();
    }
    ch_snaphdr_t expect = {.partition = 0,
                           .partitions = 4,
                           .state_len = (uint32_t)state_len,
                           .layout = layout},
                 hdr;
    ch_snapr_t *r = NULL;
    uint64_t users = 0;
    int64_t max_offset = 0;
    char why[512] = "";
    int rc = ch_snapr_open(dir, "0.snap", &expect, &r, &hdr, &users, &max_offset, why, sizeof(why));
    if (rc < 0) {
        FUZZ_CHECK(rc == -ENOMEM || why[0] != '\0');
        return 0;
    }
    const char *key;
    size_t key_len, rec_len;
    const unsigned char *rec;
    uint64_t n = 0;
    while ((rc = ch_snapr_next(r, &key, &key_len, &rec, &rec_len)) == 1) {
        (void)touch(key, key_len);
        decode(rec, rec_len);
        n++;
    }
    FUZZ_CHECK(rc == 0 ? n == users : ch_snapr_why(r)[0] != '\0');
    ch_snapr_close(r);
    return 0;
}
