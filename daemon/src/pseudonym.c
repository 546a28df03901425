/*
 * pseudonym.c - keyed pseudonyms of user ids (format and rules in pseudonym.h).
 *
 * Design notes
 * - One EVP_MAC context holds the key; each pseudonym re-initialises it with the same
 *   key (EVP_MAC_init with a NULL key keeps it), so the key schedule is not redone
 *   per event.
 * - The key file is refused when its group or others have any permission on it, as
 *   ssh does with private keys: a pseudonym is only as private as its key.
 */
#include "pseudonym.h"
#include "errbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_MAX 4096

struct ch_pseudonym {
    EVP_MAC *mac;
    EVP_MAC_CTX *ctx;
};

static int read_key(const char *path, unsigned char *key, size_t *len, char *errbuf,
                    size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int e = errno;
        return fail(errbuf, errlen, e == ENOENT ? -ENOENT : -EIO,
                    "privacy.key_file: cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        r = fail(errbuf, errlen, -EIO, "privacy.key_file: %s is not a regular file", path);
    } else if (st.st_mode & 077) {
        r = fail(errbuf, errlen, -EACCES,
                 "privacy.key_file: %s is accessible by group or others (mode %03o): make it "
                 "readable by the daemon's user only (chmod 600)",
                 path, (unsigned)(st.st_mode & 0777));
    } else {
        size_t n = 0;
        ssize_t got;
        while (n < KEY_MAX && (got = read(fd, key + n, KEY_MAX - n)) > 0) {
            n += (size_t)got;
        }
        if (n < CH_PSEUDONYM_KEY_MIN) {
            r = fail(errbuf, errlen, -EINVAL,
                     "privacy.key_file: %s holds %zu bytes; a key needs at least %d (e.g. head "
                     "-c 32 /dev/urandom > %s)",
                     path, n, CH_PSEUDONYM_KEY_MIN, path);
        }
        *len = n;
    }
    close(fd);
    return r;
}

int ch_pseudonym_new(const char *key_file, ch_pseudonym_t **ret, char *errbuf, size_t errlen) {
    unsigned char key[KEY_MAX];
    size_t len = 0;
    int r = read_key(key_file, key, &len, errbuf, errlen);
    if (r < 0) {
        OPENSSL_cleanse(key, sizeof(key));
        return r;
    }
    ch_pseudonym_t *ps = calloc(1, sizeof(*ps));
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (!ps || !(ps->mac = EVP_MAC_fetch(NULL, "HMAC", NULL)) ||
        !(ps->ctx = EVP_MAC_CTX_new(ps->mac)) || !EVP_MAC_init(ps->ctx, key, len, params)) {
        r = ps ? fail(errbuf, errlen, -EIO, "privacy: HMAC-SHA-256 unavailable in libcrypto")
               : -ENOMEM;
        ch_pseudonym_free(ps);
        ps = NULL;
    }
    OPENSSL_cleanse(key, sizeof(key));
    *ret = ps;
    return r;
}

ch_pseudonym_t *ch_pseudonym_free(ch_pseudonym_t *ps) {
    if (!ps) {
        return NULL;
    }
    EVP_MAC_CTX_free(ps->ctx); /* frees (and cleanses) the key it holds */
    EVP_MAC_free(ps->mac);
    free(ps);
    return NULL;
}

int ch_pseudonym_of(ch_pseudonym_t *ps, const void *id, size_t len, char *out) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char md[EVP_MAX_MD_SIZE + 2];
    size_t n = 0;
    if (!EVP_MAC_init(ps->ctx, NULL, 0, NULL) ||
        !EVP_MAC_update(ps->ctx, (const unsigned char *)id, len) ||
        !EVP_MAC_final(ps->ctx, md, &n, EVP_MAX_MD_SIZE) || n != 32) {
        return -EIO;
    }
    md[32] = md[33] = 0;
    /* 32 bytes: ten groups of 3 -> 40 characters, then 2 bytes -> 3 characters */
    size_t o = 0;
    for (size_t i = 0; i < 33; i += 3) {
        unsigned v = (unsigned)md[i] << 16 | (unsigned)md[i + 1] << 8 | md[i + 2];
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
        if (o < CH_PSEUDONYM_LEN) {
            out[o++] = b64[v & 63];
        }
    }
    return 0;
}
