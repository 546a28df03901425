/*
 * keyset.h - a set of byte-string keys, each with one int64 value: what a restore
 * remembers about users it cannot keep in the user table (tombstoned ones, with the
 * input offset their tombstone reflects) or must revisit (users a stale changelog
 * record was found for). Keys are copied; lookups are by a keyed hash (SipHash with a
 * random key), so keys chosen by outsiders cannot make it quadratic.
 */
#ifndef CH_KEYSET_H
#define CH_KEYSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ch_keyset ch_keyset_t;

/** @brief The longest key a set holds. */
#define CH_KEYSET_KEY_MAX 65535

/**
 * @brief An empty set.
 * @returns 0, -ENOMEM.
 * @remark The caller owns it: ch_keyset_free().
 */
int ch_keyset_new(ch_keyset_t **ret_set);

/** @brief Frees s (NULL is fine). @returns NULL. */
ch_keyset_t *ch_keyset_free(ch_keyset_t *s);

/**
 * @brief Set key's value, adding the key if it is not in the set.
 * @returns 1 added, 0 updated, -EINVAL (longer than CH_KEYSET_KEY_MAX), -ENOMEM.
 */
int ch_keyset_put(ch_keyset_t *s, const void *key, size_t len, int64_t value);

/** @brief Whether key is in the set; its value in *ret_value (may be NULL) if so. */
bool ch_keyset_get(const ch_keyset_t *s, const void *key, size_t len, int64_t *ret_value);

/** @brief Keys in the set. */
size_t ch_keyset_count(const ch_keyset_t *s);

/**
 * @brief The key after *cursor in insertion order (start with *cursor = 0).
 * @returns false at the end. The key stays valid until the next put or clear.
 */
bool ch_keyset_next(const ch_keyset_t *s, size_t *cursor, const void **ret_key, size_t *ret_len,
                    int64_t *ret_value);

/** @brief Empty the set, giving back memory beyond a small reserve. */
void ch_keyset_clear(ch_keyset_t *s);

#endif
