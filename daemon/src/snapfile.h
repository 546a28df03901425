/*
 * snapfile.h - a local snapshot of one partition's users: the file format, written
 * atomically and read back with every part checked.
 *
 * Layout (version 2), little-endian:
 *   header, 128 bytes: "CHSNAP1\n" | u32 version | i32 partition | i32 partitions of the
 *     input | u32 state_len | u64 feature layout fingerprint | i64 changelog offset the
 *     tail is replayed from | 32-byte identity: SHA-256 of the cluster id and the input
 *     and changelog topics it belongs to | the cluster id, 48 bytes NUL-padded (for the
 *     log) | i64 changelog offset of the partition's epoch record | its 16-byte value |
 *     16 zero bytes (160 bytes in all)
 *   entries: u16 key_len | key | state record (staterec.h, 64 + 8 x state_len bytes)
 *   trailer, 64 bytes: "CHSNEND\n" | u64 users | i64 highest input offset a record
 *     reflects (-1: none) | u64 0 | SHA-256 of every byte before it
 * A writer writes NAME.tmp, fsyncs it, renames it to NAME and fsyncs the directory, so
 * a reader sees a whole snapshot or the previous one, never part of one.
 */
#ifndef CH_SNAPFILE_H
#define CH_SNAPFILE_H

#include <stddef.h>
#include <stdint.h>

#define CH_SNAPFILE_VERSION 2
#define CH_SNAPFILE_CLUSTER_MAX 48

typedef struct ch_snaphdr {
    int32_t partition;
    int32_t partitions; /* of the input topic when written */
    uint32_t state_len;
    uint64_t layout;
    int64_t changelog_from; /* replaying the changelog from here completes the snapshot */
    unsigned char identity[32]; /* cluster and topics (snapshot.c); another's is refused */
    char cluster[CH_SNAPFILE_CLUSTER_MAX]; /* the cluster id, NUL-terminated, for the log */
    int64_t epoch_offset;      /* where the changelog partition's epoch record sits */
    unsigned char epoch[16];   /* its value: a restore finds it there, or ignores the file */
} ch_snaphdr_t;

typedef struct ch_snapw ch_snapw_t;
typedef struct ch_snapr ch_snapr_t;

/**
 * @brief Start writing dir/name (as dir/name.tmp until committed).
 * @returns 0, -EIO (errbuf says why), -ENOMEM.
 */
int ch_snapw_open(const char *dir, const char *name, const ch_snaphdr_t *h, ch_snapw_t **ret,
                  char *errbuf, size_t errlen);

/**
 * @brief Append one user: key, and its state record of 64 + 8 x state_len bytes that
 *        reflects input_offset.
 * @returns 0, -EIO (a write failed; commit will fail too).
 */
int ch_snapw_add(ch_snapw_t *w, const char *key, size_t key_len, const void *rec,
                 int64_t input_offset);

/** @brief Users appended so far. */
uint64_t ch_snapw_users(const ch_snapw_t *w);

/** @brief The highest input offset an appended record reflects (-1: none). */
int64_t ch_snapw_max_offset(const ch_snapw_t *w);

/**
 * @brief Write the trailer, fsync, rename over dir/name, fsync dir; frees w.
 * @returns 0, -EIO (errbuf says why; the temporary file is removed).
 */
int ch_snapw_commit(ch_snapw_t *w, char *errbuf, size_t errlen);

/** @brief Give up: remove the temporary file and free. Accepts NULL. */
void ch_snapw_abort(ch_snapw_t *w);

/**
 * @brief Open dir/name and check its header and trailer against expect (identity,
 *        partition, partitions, state_len, layout; changelog_from is ignored).
 * @param ret_hdr the file's header; ret_users, ret_max_offset from its trailer.
 * @returns 0; -ENOENT (no snapshot); -EINVAL (damaged or truncated: why says how);
 *          -ESTALE (another cluster or topics, an older version, another partition
 *          count or feature layout: why says which);
 *          -ENOMEM.
 */
int ch_snapr_open(const char *dir, const char *name, const ch_snaphdr_t *expect, ch_snapr_t **ret,
                  ch_snaphdr_t *ret_hdr, uint64_t *ret_users, int64_t *ret_max_offset, char *why,
                  size_t whylen);

/**
 * @brief The next user; views valid until the next call.
 * @returns 1 (a user), 0 (the end, and the checksum and count match), -EINVAL (damaged:
 *          ch_snapr_why() says how; what was read before must be discarded).
 */
int ch_snapr_next(ch_snapr_t *r, const char **key, size_t *key_len, const unsigned char **rec,
                  size_t *rec_len);

/** @brief Why the last call failed. */
const char *ch_snapr_why(const ch_snapr_t *r);

/** @brief Close. Accepts NULL. @returns NULL. */
ch_snapr_t *ch_snapr_close(ch_snapr_t *r);

#endif
