/*
 * seed.c - seed snapshot names, identity and placement (seed.h).
 */
#include "seed.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <openssl/evp.h>

void ch_seed_name(const char *input_topic, int32_t partition, char *buf, size_t len) {
    snprintf(buf, len, "%s-%d.seed", input_topic, (int)partition);
}

int ch_seed_identity(const char *input_topic, unsigned char out[32]) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    static const char tag[] = "cohortd-seed";
    unsigned int dlen = 0;
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
              EVP_DigestUpdate(md, tag, sizeof(tag)) && /* with its NUL */
              EVP_DigestUpdate(md, input_topic, strlen(input_topic) + 1) &&
              EVP_DigestFinal_ex(md, out, &dlen) && dlen == 32;
    EVP_MD_CTX_free(md);
    return ok ? 0 : -EIO;
}

int32_t ch_seed_partition(const void *key, size_t key_len, int32_t partitions) {
    /* librdkafka's murmur2 partitioner reads neither the topic nor the opaques */
    return rd_kafka_msg_partitioner_murmur2(NULL, key, key_len, partitions, NULL, NULL);
}
