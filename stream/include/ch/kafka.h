/*
 * ch/kafka.h - Kafka consumer and producer for an external event loop.
 *
 * Both expose a file descriptor that becomes readable when librdkafka has
 * something for the caller (messages, rebalances, delivery reports) and a
 * non-blocking, budgeted call that serves it. Nothing here blocks, except the
 * explicitly blocking flush/close/commit_sync calls used at shutdown and on
 * partition revocation.
 *
 * @locality Call everything from one thread (the loop thread). The log callback
 *           may be invoked from librdkafka's internal threads.
 */
#ifndef CH_KAFKA_H
#define CH_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* librdkafka configuration as ordered key/value pairs; later pairs win. */
typedef struct ch_kafka_conf {
    const char *const *keys;
    const char *const *values;
    size_t n;
    /* Receives librdkafka's log lines (syslog levels). May be called from any thread. */
    void (*log)(void *opaque, int level, const char *facility, const char *msg);
    /* Receives client-level errors ("all brokers down", authentication failures,
     * fatal errors: the client is unusable). Called from drain/poll on the caller's
     * thread. NULL: logged through log at level 3. */
    void (*error)(void *opaque, bool fatal, const char *reason);
    void *log_opaque; /* for log and error */
} ch_kafka_conf_t;

/* A consumed message, borrowed until the next ch_consumer_drain(). */
typedef struct ch_msg {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const void *key;
    size_t key_len;
    const void *value;
    size_t value_len;
    int64_t timestamp_ms; /* -1 if none */
    int err;              /* 0, or -EIO: an error event; errstr says what */
    const char *errstr;
    bool err_fatal;
    bool eof; /* ch_reader_drain(): the partition's end is reached (no record) */
    const void *raw; /* the client's message (ch_msg_header()) */
} ch_msg_t;

typedef struct ch_header {
    const char *name;
    const void *value;
    size_t value_len;
} ch_header_t;

/** @brief The last header called name of a consumed message (value may be NULL).
 *  @returns 0, -ENOENT. */
int ch_msg_header(const ch_msg_t *m, const char *name, const void **value, size_t *value_len);

/* Rebalance hooks: partitions of the subscribed topic. on_revoke runs before the
 * partitions are given up, so the caller can flush outputs and commit. lost is true
 * when the partitions were already taken (session timeout): committing is futile. */
typedef struct ch_rebalance_hooks {
    void (*on_assign)(void *opaque, const int32_t *partitions, size_t n);
    void (*on_revoke)(void *opaque, const int32_t *partitions, size_t n, bool lost);
    void *opaque;
} ch_rebalance_hooks_t;

typedef struct ch_consumer ch_consumer_t;
typedef struct ch_producer ch_producer_t;

/**
 * @brief Create a group consumer subscribed to one topic.
 * @param conf librdkafka settings (must include group.id and bootstrap.servers).
 * @param hooks rebalance hooks (copied; may be NULL).
 * @returns 0, -EINVAL (a setting was rejected: errbuf names it), -EIO, -ENOMEM.
 */
int ch_consumer_new(const ch_kafka_conf_t *conf, const char *topic,
                    const ch_rebalance_hooks_t *hooks, ch_consumer_t **ret_consumer,
                    char *errbuf, size_t errlen);

/** @brief Close (if not closed) and free. Accepts NULL. @returns NULL. */
ch_consumer_t *ch_consumer_free(ch_consumer_t *c);

/** @brief A non-blocking fd that turns readable when there is work. */
int ch_consumer_fd(const ch_consumer_t *c);

/**
 * @brief Take up to budget messages (and serve rebalances) without blocking.
 * @param out receives the views; valid until the next drain or close.
 * @returns the number of entries in out (>= 0).
 */
int ch_consumer_drain(ch_consumer_t *c, ch_msg_t *out, size_t budget);

/**
 * @brief Mark a partition processed up to next_offset (exclusive); committed by the
 *        periodic auto-commit and at close.
 * @returns 0, -EIO (errbuf says why, e.g. partition not assigned).
 */
int ch_consumer_store(ch_consumer_t *c, int32_t partition, int64_t next_offset, char *errbuf,
                      size_t errlen);

/** @brief Commit the stored offsets, waiting at most timeout_ms (0: do not wait) for the
 *  broker's answer. @returns 0, -ETIMEDOUT, -EIO (errbuf says why). */
int ch_consumer_commit(ch_consumer_t *c, int timeout_ms, char *errbuf, size_t errlen);

/** @brief Record that a partition's offsets up to next_offset were committed by other
 *  means (a transaction). */
void ch_consumer_mark_committed(ch_consumer_t *c, int32_t partition, int64_t next_offset);

/**
 * @brief What was stored for commit but not confirmed committed by the broker (through
 *        the commit calls above, auto-commits, or ch_consumer_mark_committed()), on
 *        the partitions held until ch_consumer_close() (a partition revoked before
 *        is its next owner's to reprocess).
 * @param ret_records if not NULL: the records between the two, over the partitions
 *        where both are known.
 * @returns the number of such partitions.
 */
size_t ch_consumer_uncommitted(const ch_consumer_t *c, int64_t *ret_records);

/** @brief Number of partitions currently assigned. */
size_t ch_consumer_assigned(const ch_consumer_t *c);

/**
 * @brief input.start_at: a partition assigned without a committed offset starts at the
 *        first record stamped at or after ts_ms (offsetsForTimes); where the broker
 *        cannot say, at its beginning, with ch_consumer_before_start() skipping records
 *        stamped earlier until the first that is not. Call before the first drain;
 *        -1: off (the default).
 */
void ch_consumer_start_at(ch_consumer_t *c, int64_t ts_ms);

/**
 * @brief Whether m is a record stamped before input.start_at on a partition that began
 *        without a committed offset and has not yet had one stamped at or after it: the
 *        caller skips it (its offset still counts as consumed).
 */
bool ch_consumer_before_start(ch_consumer_t *c, const ch_msg_t *m);

/** @brief Where consumption of an assigned partition begins: its committed offset, or
 *  where auto.offset.reset (or input.start_at) puts it without one (known before the
 *  assign hook runs); -1 unknown. */
int64_t ch_consumer_start_offset(const ch_consumer_t *c, int32_t partition);

/** @brief Whether ch_consumer_start_offset() is the group's committed offset (false: the
 *  group had none for the partition when it was assigned, or it is unknown). */
bool ch_consumer_start_committed(const ch_consumer_t *c, int32_t partition);

/* Records of a partition the broker deleted before they were consumed: the consumer
 * expected offset from next, the log started at to, the record handed out was at. */
typedef struct ch_consumer_skip {
    int32_t partition;
    int64_t from, to; /* [from, to): the records skipped */
    int64_t at;       /* the offset consumption went on with */
} ch_consumer_skip_t;

/**
 * @brief Take the skips seen since the last call (at most 16 are kept between calls;
 *        the counts include every one).
 * @param ret_jumps, ret_skipped jumps and records skipped since the start.
 * @returns skips copied into out.
 */
size_t ch_consumer_take_skips(ch_consumer_t *c, ch_consumer_skip_t *out, size_t max,
                              uint64_t *ret_jumps, uint64_t *ret_skipped);

/**
 * @brief The cluster's id (from the brokers' metadata; blocks up to timeout_ms).
 * @returns 0, -EIO (not known: no metadata, or a broker too old to have one).
 */
int ch_consumer_cluster_id(ch_consumer_t *c, int timeout_ms, char *buf, size_t len);

/**
 * @brief Ask the broker again where an assigned partition begins (its committed
 *        offset, or auto.offset.reset's place without one), when the lookup at assignment
 *        failed: a coordinator moving, a lookup slower than its timeout, offsets pending
 *        in an open transaction (KIP-447 answers "unstable offset" until it ends).
 * @param timeout_ms the longest this blocks.
 * @returns 0 and the offset in *ret_offset (also ch_consumer_start_offset's from now on),
 *          -EAGAIN (not known yet: the reason in errbuf), -ENOMEM.
 */
int ch_consumer_lookup_start(ch_consumer_t *c, int32_t partition, int timeout_ms,
                             int64_t *ret_offset, char *errbuf, size_t errlen);

/**
 * @brief Hold or release an assigned partition for the caller's own reasons (e.g. while
 *        its state is restored): its records are buffered by the aligner and none is
 *        handed out until released (with enough buffered, it is paused); a revoke ends
 *        the hold. Call from the assign hook to receive nothing of it before release.
 * @returns 0, -EINVAL, -ENOTSUP (no aligner: ch_consumer_align() was not called).
 */
int ch_consumer_hold(ch_consumer_t *c, int32_t partition, bool hold);

/**
 * @brief Give back the records of a partition, from offset from on, that the last drain
 *        handed out and the caller did not process: the partition is held
 *        (ch_consumer_hold) and they come out again, in order, after it is released.
 *        Their views stay valid until then.
 * @returns how many were given back, -ENOTSUP (no aligner), -ENOMEM (none was).
 */
int ch_consumer_unread(ch_consumer_t *c, int32_t partition, int64_t from);

/**
 * @brief How many partitions a topic has, from a metadata request for all topics (one
 *        naming the topic could have the broker create it). Blocks up to timeout_ms: for
 *        start-up.
 * @returns the count (> 0), -ENOENT (no such topic), -ETIMEDOUT, -EIO (errbuf says why).
 */
int ch_consumer_partition_count(ch_consumer_t *c, const char *topic, int timeout_ms,
                                char *errbuf, size_t errlen);

/**
 * @brief Hand records over across partitions in record-timestamp order (ch/align.h):
 *        none more than max_skew_ms ahead of a partition that still has records on
 *        the broker and delivered within idle_s (max_skew_ms 0: no alignment, only
 *        the holds of ch_consumer_hold()). Call before the first drain.
 * @returns 0, -EINVAL, -ENOMEM, -EBUSY (already on, or partitions already assigned).
 */
int ch_consumer_align(ch_consumer_t *c, int64_t max_skew_ms, double idle_s);

typedef struct ch_consumer_align_stats {
    size_t held;     /* records waiting for slower partitions */
    size_t paused;   /* partitions paused because they ran ahead */
    uint64_t forced; /* records released past the skew because the buffer was full */
    uint64_t pauses; /* partitions paused so far */
} ch_consumer_align_stats_t;

/** @brief The aligner's figures. @returns false (all zero) when alignment is off. */
bool ch_consumer_align_stats(const ch_consumer_t *c, ch_consumer_align_stats_t *ret);

/* Consumer lag of one assigned partition, from cached values (no broker round trip). */
typedef struct ch_partition_lag {
    int32_t partition;
    int64_t next_offset;    /* next offset to process: last consumed + 1, else where
                               consumption started on assignment; -1 unknown */
    int64_t high_watermark; /* from the latest fetch response; -1 not yet known */
    int64_t lag;            /* high_watermark - next_offset (>= 0); -1 unknown */
} ch_partition_lag_t;

/**
 * @brief The lag of every assigned partition of the subscribed topic.
 * @param out receives up to cap entries.
 * @returns the number of assigned partitions (may exceed cap), -EIO.
 */
int ch_consumer_lag(ch_consumer_t *c, ch_partition_lag_t *out, size_t cap);

/**
 * @brief Leave the group: revoke (hooks run), commit stored offsets. Blocks at most
 *        about timeout_ms.
 * @returns 0, -EIO, -ETIMEDOUT (gave up: stored offsets may not be committed).
 */
int ch_consumer_close(ch_consumer_t *c, int timeout_ms, char *errbuf, size_t errlen);

/* Delivery report: err is 0 (the message is at offset of partition), -EMSGSIZE (the
 * record itself was refused: too large, invalid, or a timestamp out of range; sending
 * it again cannot succeed) or -EIO (anything else: errstr says why; offset -1). During
 * the call, ch_producer_reported() gives the record. */
typedef void(ch_delivery_fn)(void *opaque, void *msg_opaque, int32_t partition, int64_t offset,
                             int err, const char *errstr);

/**
 * @brief Create an idempotent producer.
 * @param on_delivery called from ch_producer_poll()/flush() for every message.
 * @returns 0, -EINVAL (errbuf names the setting), -ENOMEM.
 */
int ch_producer_new(const ch_kafka_conf_t *conf, ch_delivery_fn *on_delivery, void *opaque,
                    ch_producer_t **ret_producer, char *errbuf, size_t errlen);

/** @brief Flush (up to 10 s) and free. Accepts NULL. @returns NULL. */
ch_producer_t *ch_producer_free(ch_producer_t *p);

/** @brief The record a delivery report is about (topic, partition, key, value; its
 *  headers through ch_msg_header()), valid only inside the delivery callback.
 *  @returns 0, -ENOENT (not inside a delivery callback). */
int ch_producer_reported(const ch_producer_t *p, ch_msg_t *ret);

/** @brief The largest record (key + value + headers) the producer accepts: its
 *  message.max.bytes. */
size_t ch_producer_max_message(const ch_producer_t *p);

/** @brief A non-blocking fd that turns readable when delivery reports are ready. */
int ch_producer_fd(const ch_producer_t *p);

/**
 * @brief Enqueue one message (copied) to partition (-1: the partitioner's choice by
 *        key) with record timestamp timestamp_ms (<= 0: now). A NULL value with
 *        value_len 0 is a tombstone.
 * @returns 0; -ENOBUFS (local queue full: poll and retry); -EMSGSIZE (larger than
 *          ch_producer_max_message()); -EIO (errbuf says why).
 */
int ch_producer_send(ch_producer_t *p, const char *topic, int32_t partition, const void *key,
                     size_t key_len,
                     const void *value, size_t value_len, const ch_header_t *headers,
                     size_t n_headers, void *msg_opaque, int64_t timestamp_ms, char *errbuf,
                     size_t errlen);

/* Transactions (a producer made with transactional.id set). Each call blocks up to
 * timeout_ms. Errors: -ECANCELED (abortable: call ch_producer_txn_abort(), then the
 * work of the transaction must be redone), -EPERM (fatal, e.g. fenced by a newer
 * producer with the same transactional.id: the producer is unusable), -ETIMEDOUT
 * (retriable: the call may be repeated); errbuf says why. */

/** @brief Register the transactional.id (aborting what a previous incarnation left
 *  open). @returns 0 or an error above. */
int ch_producer_txn_init(ch_producer_t *p, int timeout_ms, char *errbuf, size_t errlen);

/** @brief Begin a transaction. @returns 0 or an error above. */
int ch_producer_txn_begin(ch_producer_t *p, char *errbuf, size_t errlen);

/** @brief The next input offset of a partition, for ch_producer_txn_commit(). */
typedef struct ch_next_offset {
    int32_t partition;
    int64_t next;
} ch_next_offset_t;

/**
 * @brief Commit the transaction with the consumer group's input offsets in it (sent
 *        with c's group metadata, so a consumer that lost the partitions in a
 *        rebalance is fenced: KIP-447), after every message in it is delivered.
 * @returns 0 or an error above.
 */
int ch_producer_txn_commit(ch_producer_t *p, ch_consumer_t *c, const ch_next_offset_t *offsets,
                           size_t n, int timeout_ms, char *errbuf, size_t errlen);

/** @brief Abort the transaction (its messages are never shown to read_committed
 *  consumers). @returns 0 or an error above. */
int ch_producer_txn_abort(ch_producer_t *p, int timeout_ms, char *errbuf, size_t errlen);

/** @brief Serve delivery reports without blocking. @returns how many were served. */
int ch_producer_poll(ch_producer_t *p);

/** @brief Wait until every message is delivered or failed. @returns 0, -ETIMEDOUT. */
int ch_producer_flush(ch_producer_t *p, int timeout_ms);

/** @brief Give up on every message not yet acknowledged (queued or in flight): each is
 *  reported failed at the next poll or flush, and freeing no longer waits for them. */
void ch_producer_purge(ch_producer_t *p);

/** @brief Messages enqueued but not yet reported. */
size_t ch_producer_outstanding(const ch_producer_t *p);

/** @brief librdkafka's version string. */
const char *ch_kafka_version(void);

/* ---------------------------------------------------------------- reader */

/* A reader of chosen partitions of one topic from their beginning, outside any group
 * (it never commits): how state is restored from a changelog. */
typedef struct ch_reader ch_reader_t;

/** @brief Create a reader (conf: consumer settings; group and commit settings are
 *  overridden). @returns 0, -EINVAL, -EIO, -ENOMEM. */
int ch_reader_new(const ch_kafka_conf_t *conf, const char *topic, ch_reader_t **ret_reader,
                  char *errbuf, size_t errlen);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_reader_t *ch_reader_free(ch_reader_t *r);

/** @brief A non-blocking fd that turns readable when there are records. */
int ch_reader_fd(const ch_reader_t *r);

/** @brief Read a partition from offset from (CH_READ_BEGINNING: its first record); its end
 *  is reported once as an entry with eof set (offset: the end). @returns 0, -EIO. */
#define CH_READ_BEGINNING ((int64_t)-2)
#define CH_READ_END ((int64_t)-1) /* only records written after the start */
int ch_reader_start(ch_reader_t *r, int32_t partition, int64_t from, char *errbuf, size_t errlen);

/** @brief The first offset a partition still holds (its log start) and the offset its
 *  next record will get (its end), asking the broker (blocks up to timeout_ms).
 *  @returns 0, -EIO. */
int ch_reader_log_bounds(ch_reader_t *r, int32_t partition, int timeout_ms, int64_t *ret_start,
                         int64_t *ret_end, char *errbuf, size_t errlen);

/** @brief Stop reading a partition. @returns 0, -EIO. */
int ch_reader_stop(ch_reader_t *r, int32_t partition, char *errbuf, size_t errlen);

/** @brief Up to budget records or end-of-partition entries, without blocking; views
 *  valid until the next drain. @returns the number of entries. */
int ch_reader_drain(ch_reader_t *r, ch_msg_t *out, size_t budget);

#endif
