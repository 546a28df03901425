/*
 * snapfile.c - the snapshot file (format in snapfile.h).
 *
 * Design notes
 * - The checksum is SHA-256 (OpenSSL's libcrypto, 1.7 GB/s here with the SHA
 *   extensions), computed while writing and while reading, so a snapshot costs one
 *   pass each way. A reader hands out users as it goes and says at the end whether
 *   they may be kept: the caller applies them and throws them away if the end says
 *   the file was damaged, instead of reading the file twice.
 * - Header and trailer are checked at open (the trailer by position, from the file
 *   size), so a truncated file or one of another partition count or feature layout
 *   is refused before a user is read.
 * - Durability: fsync of the file before the rename, fsync of the directory after it
 *   (the rename itself is then durable).
 */
#include "snapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "le.h"
#include "staterec.h"

#define HDR 160
#define TRL 64
#define SHA 32
#define IO_BUF (1 << 20)

static const char magic_head[8] = "CHSNAP1\n";
static const char magic_tail[8] = "CHSNEND\n";

static void encode_header(const ch_snaphdr_t *h, unsigned char *b) {
    memset(b, 0, HDR);
    memcpy(b, magic_head, 8);
    ch_put32(b + 8, CH_SNAPFILE_VERSION);
    ch_put32(b + 12, (uint32_t)h->partition);
    ch_put32(b + 16, (uint32_t)h->partitions);
    ch_put32(b + 20, h->state_len);
    ch_put64(b + 24, h->layout);
    ch_put64(b + 32, (uint64_t)h->changelog_from);
    memcpy(b + 40, h->identity, 32);
    memcpy(b + 72, h->cluster, strnlen(h->cluster, CH_SNAPFILE_CLUSTER_MAX - 1));
    ch_put64(b + 120, (uint64_t)h->epoch_offset);
    memcpy(b + 128, h->epoch, 16);
}

static void path_of(char *out, size_t len, const char *dir, const char *name, const char *sfx) {
    snprintf(out, len, "%s/%s%s", dir, name, sfx);
}

/* ------------------------------------------------------------------ writer */

struct ch_snapw {
    FILE *f;
    char *buf;
    EVP_MD_CTX *md;
    char dir[4096], path[4096], tmp[4200];
    uint64_t users;
    int64_t max_offset;
    size_t rec_len;
    bool bad;
};

static void wr(ch_snapw_t *w, const void *p, size_t n) {
    if (w->bad || fwrite(p, 1, n, w->f) != n || !EVP_DigestUpdate(w->md, p, n)) {
        w->bad = true;
    }
}

static void free_w(ch_snapw_t *w) {
    if (w->f) {
        fclose(w->f);
    }
    EVP_MD_CTX_free(w->md);
    free(w->buf);
    free(w);
}

int ch_snapw_open(const char *dir, const char *name, const ch_snaphdr_t *h, ch_snapw_t **ret,
                  char *errbuf, size_t errlen) {
    ch_snapw_t *w = calloc(1, sizeof(*w));
    if (!w) {
        return -ENOMEM;
    }
    snprintf(w->dir, sizeof(w->dir), "%s", dir);
    path_of(w->path, sizeof(w->path), dir, name, "");
    path_of(w->tmp, sizeof(w->tmp), dir, name, ".tmp");
    w->rec_len = ch_staterec_size(h->state_len);
    w->max_offset = -1;
    w->buf = malloc(IO_BUF);
    w->md = EVP_MD_CTX_new();
    if (!w->buf || !w->md || !EVP_DigestInit_ex(w->md, EVP_sha256(), NULL)) {
        free_w(w);
        return -ENOMEM;
    }
    w->f = fopen(w->tmp, "wbe");
    if (!w->f) {
        snprintf(errbuf, errlen, "cannot create %s: %s", w->tmp, strerror(errno));
        free_w(w);
        return -EIO;
    }
    setvbuf(w->f, w->buf, _IOFBF, IO_BUF);
    unsigned char b[HDR];
    encode_header(h, b);
    wr(w, b, HDR);
    *ret = w;
    return 0;
}

int ch_snapw_add(ch_snapw_t *w, const char *key, size_t key_len, const void *rec,
                 int64_t input_offset) {
    unsigned char kl[2] = {(unsigned char)(key_len & 0xff), (unsigned char)(key_len >> 8)};
    if (key_len == 0 || key_len > UINT16_MAX) {
        w->bad = true;
        return -EIO;
    }
    wr(w, kl, 2);
    wr(w, key, key_len);
    wr(w, rec, w->rec_len);
    w->users++;
    if (input_offset > w->max_offset) {
        w->max_offset = input_offset;
    }
    return w->bad ? -EIO : 0;
}

uint64_t ch_snapw_users(const ch_snapw_t *w) { return w->users; }

int64_t ch_snapw_max_offset(const ch_snapw_t *w) { return w->max_offset; }

int ch_snapw_commit(ch_snapw_t *w, char *errbuf, size_t errlen) {
    unsigned char t[TRL] = {0};
    memcpy(t, magic_tail, 8);
    ch_put64(t + 8, w->users);
    ch_put64(t + 16, (uint64_t)w->max_offset);
    wr(w, t, TRL - SHA);
    unsigned int n = 0;
    if (!w->bad && (!EVP_DigestFinal_ex(w->md, t + TRL - SHA, &n) || n != SHA)) {
        w->bad = true;
    }
    if (!w->bad && fwrite(t + TRL - SHA, 1, SHA, w->f) != SHA) {
        w->bad = true;
    }
    const char *step = "write";
    int e = 0;
    if (w->bad || fflush(w->f) != 0) {
        e = errno ? errno : EIO;
    } else if (fsync(fileno(w->f)) < 0) {
        e = errno, step = "fsync";
    }
    int c = fclose(w->f);
    w->f = NULL;
    if (!e && c != 0) {
        e = errno;
    } else if (!e && rename(w->tmp, w->path) < 0) {
        e = errno, step = "rename";
    }
    if (!e) {
        int d = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d < 0 || fsync(d) < 0) {
            e = errno, step = "fsync of the directory";
        }
        if (d >= 0) {
            close(d);
        }
        if (!e) {
            free_w(w);
            return 0;
        }
    }
    snprintf(errbuf, errlen, "snapshot %s: %s failed: %s", w->path, step, strerror(e));
    unlink(w->tmp);
    free_w(w);
    return -EIO;
}

void ch_snapw_abort(ch_snapw_t *w) {
    if (!w) {
        return;
    }
    if (w->f) {
        fclose(w->f);
        w->f = NULL;
    }
    unlink(w->tmp);
    free_w(w);
}

/* ------------------------------------------------------------------ reader */

struct ch_snapr {
    FILE *f;
    char *buf;
    EVP_MD_CTX *md;
    unsigned char trailer[TRL];
    unsigned char *entry; /* key (up to 65,535 bytes), then the record */
    size_t rec_len;
    off_t pos, end; /* entries run from HDR to end */
    uint64_t users, seen;
    char why[256];
};

static int bad(ch_snapr_t *r, const char *why) {
    snprintf(r->why, sizeof(r->why), "%s", why);
    return -EINVAL;
}

int ch_snapr_open(const char *dir, const char *name, const ch_snaphdr_t *expect, ch_snapr_t **ret,
                  ch_snaphdr_t *ret_hdr, uint64_t *ret_users, int64_t *ret_max_offset, char *why,
                  size_t whylen) {
    char path[4200];
    path_of(path, sizeof(path), dir, name, "");
    FILE *f = fopen(path, "rbe");
    if (!f) {
        int e = errno;
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(e));
        return e == ENOENT ? -ENOENT : -EINVAL;
    }
    ch_snapr_t *r = calloc(1, sizeof(*r));
    if (!r) {
        fclose(f);
        return -ENOMEM;
    }
    r->f = f;
    r->rec_len = ch_staterec_size(expect->state_len);
    r->buf = malloc(IO_BUF);
    r->entry = malloc(UINT16_MAX + r->rec_len);
    r->md = EVP_MD_CTX_new();
    if (!r->buf || !r->entry || !r->md || !EVP_DigestInit_ex(r->md, EVP_sha256(), NULL)) {
        ch_snapr_close(r);
        return -ENOMEM;
    }
    setvbuf(f, r->buf, _IOFBF, IO_BUF);
    struct stat st;
    unsigned char h[HDR];
    int rc = 0;
    if (fstat(fileno(f), &st) < 0 || st.st_size < HDR + TRL) {
        rc = bad(r, "truncated: shorter than a header and a trailer");
    } else if (fread(h, 1, HDR, f) != HDR || memcmp(h, magic_head, 8) != 0) {
        rc = bad(r, "not a cohortd snapshot (header)");
    } else if (ch_get32(h + 8) != CH_SNAPFILE_VERSION) {
        snprintf(r->why, sizeof(r->why),
                 "version %u, not %d (an older one does not name the cluster and topics it "
                 "belongs to)",
                 (unsigned)ch_get32(h + 8), CH_SNAPFILE_VERSION);
        rc = -ESTALE;
    } else if (pread(fileno(f), r->trailer, TRL, st.st_size - TRL) != TRL ||
               memcmp(r->trailer, magic_tail, 8) != 0) {
        rc = bad(r, "truncated or damaged: no trailer at its end");
    }
    ch_snaphdr_t got = {0};
    if (rc == 0) {
        got = (ch_snaphdr_t){.partition = (int32_t)ch_get32(h + 12),
                             .partitions = (int32_t)ch_get32(h + 16),
                             .state_len = ch_get32(h + 20),
                             .layout = ch_get64(h + 24),
                             .changelog_from = (int64_t)ch_get64(h + 32)};
        memcpy(got.identity, h + 40, 32);
        got.epoch_offset = (int64_t)ch_get64(h + 120);
        memcpy(got.epoch, h + 128, 16);
        memcpy(got.cluster, h + 72, CH_SNAPFILE_CLUSTER_MAX - 1);
        got.cluster[CH_SNAPFILE_CLUSTER_MAX - 1] = '\0';
        if (memcmp(got.identity, expect->identity, 32) != 0) {
            snprintf(r->why, sizeof(r->why),
                     "written for another cluster or other topics (cluster id %s; now %s, "
                     "with these input and changelog topics)",
                     got.cluster[0] ? got.cluster : "?", expect->cluster);
            rc = -ESTALE;
        } else if (got.partition != expect->partition) {
            snprintf(r->why, sizeof(r->why), "holds partition %d, not %d", got.partition,
                     expect->partition);
            rc = -EINVAL;
        } else if (got.partitions != expect->partitions) {
            snprintf(r->why, sizeof(r->why),
                     "written when the input had %d partitions; it has %d now", got.partitions,
                     expect->partitions);
            rc = -ESTALE;
        } else if (got.state_len != expect->state_len || got.layout != expect->layout) {
            snprintf(r->why, sizeof(r->why),
                     "written for another feature layout (fingerprint %016llx, now %016llx)",
                     (unsigned long long)got.layout, (unsigned long long)expect->layout);
            rc = -ESTALE;
        } else if (!EVP_DigestUpdate(r->md, h, HDR)) {
            rc = -ENOMEM;
        }
    }
    if (rc < 0) {
        snprintf(why, whylen, "%s", r->why);
        ch_snapr_close(r);
        return rc;
    }
    r->pos = HDR;
    r->end = st.st_size - TRL;
    r->users = ch_get64(r->trailer + 8);
    *ret_hdr = got;
    *ret_users = r->users;
    *ret_max_offset = (int64_t)ch_get64(r->trailer + 16);
    *ret = r;
    return 0;
}

static bool rd(ch_snapr_t *r, void *p, size_t n) {
    if (r->end - r->pos < (off_t)n || fread(p, 1, n, r->f) != n || !EVP_DigestUpdate(r->md, p, n)) {
        return false;
    }
    r->pos += (off_t)n;
    return true;
}

int ch_snapr_next(ch_snapr_t *r, const char **key, size_t *key_len, const unsigned char **rec,
                  size_t *rec_len) {
    if (r->pos == r->end) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (!EVP_DigestUpdate(r->md, r->trailer, TRL - SHA) || !EVP_DigestFinal_ex(r->md, md, &n) ||
            n != SHA || memcmp(md, r->trailer + TRL - SHA, SHA) != 0) {
            return bad(r, "damaged: checksum mismatch");
        }
        if (r->seen != r->users) {
            return bad(r, "damaged: user count differs from the trailer's");
        }
        return 0;
    }
    unsigned char kl[2];
    if (!rd(r, kl, 2)) {
        return bad(r, "damaged: an entry runs into the trailer");
    }
    size_t klen = (size_t)kl[0] | (size_t)kl[1] << 8;
    if (klen == 0 || !rd(r, r->entry, klen + r->rec_len)) {
        return bad(r, klen == 0 ? "damaged: empty user id"
                                : "damaged: an entry runs into the "
                                  "trailer");
    }
    r->seen++;
    *key = (const char *)r->entry;
    *key_len = klen;
    *rec = r->entry + klen;
    *rec_len = r->rec_len;
    return 1;
}

const char *ch_snapr_why(const ch_snapr_t *r) { return r->why; }

ch_snapr_t *ch_snapr_close(ch_snapr_t *r) {
    if (!r) {
        return NULL;
    }
    if (r->f) {
        fclose(r->f);
    }
    EVP_MD_CTX_free(r->md);
    free(r->buf);
    free(r->entry);
    free(r);
    return NULL;
}
