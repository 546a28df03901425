/*
 * pseudonym.h - keyed pseudonyms of user ids (privacy.pseudonymize).
 *
 * A pseudonym is HMAC-SHA-256(key, user id) written in unpadded base64url (43
 * characters), computed with OpenSSL's libcrypto. Without the key nobody can link a
 * pseudonym to a user id; the key holder re-identifies by computing the pseudonyms of
 * the ids they know (cohort-pseudonym). The same key gives the same pseudonym across
 * restarts and instances; another key gives unrelated ones.
 */
#ifndef CH_PSEUDONYM_H
#define CH_PSEUDONYM_H

#include <stddef.h>

#define CH_PSEUDONYM_LEN 43
#define CH_PSEUDONYM_KEY_MIN 32 /* bytes of key at least */

typedef struct ch_pseudonym ch_pseudonym_t;

/**
 * @brief Load the key: the whole content of key_file (at least CH_PSEUDONYM_KEY_MIN
 *        bytes), a regular file that neither its group nor others may read or write.
 *        The key is never logged or printed.
 * @returns 0; -ENOENT, -EACCES (permissions too open), -EINVAL (too short), -EIO,
 *          -ENOMEM (errbuf says which, naming the file, never its content).
 */
int ch_pseudonym_new(const char *key_file, ch_pseudonym_t **ret, char *errbuf, size_t errlen);

/** @brief Free (the key is wiped first). Accepts NULL. @returns NULL. */
ch_pseudonym_t *ch_pseudonym_free(ch_pseudonym_t *ps);

/**
 * @brief The pseudonym of id (len bytes) into out (CH_PSEUDONYM_LEN bytes, no NUL).
 * @returns 0, -EIO (libcrypto failed).
 */
int ch_pseudonym_of(ch_pseudonym_t *ps, const void *id, size_t len, char *out);

#endif
