/*
 * tool_args.h - command-line helpers shared by every tool (no Kafka, no Avro).
 */
#ifndef CH_TOOL_ARGS_H
#define CH_TOOL_ARGS_H

/**
 * @brief Parse a whole string as a number in [lo, hi].
 * @returns 0 and *ret, or -EINVAL.
 */
int tool_parse_number(const char *s, double lo, double hi, double *ret);

#endif
