/*
 * tool_csv.h - splitting CSV lines (RFC 4180) for the tools.
 */
#ifndef CH_TOOL_CSV_H
#define CH_TOOL_CSV_H

/**
 * @brief Split one CSV line in place (RFC 4180 quotes, "" escapes; the line may end
 *        in \n or \r\n).
 * @param cols receives pointers into line, NUL-terminated.
 * @returns the number of columns, or -1 (more than max, or a malformed quote).
 */
int tool_csv_split(char *line, char **cols, int max);

#endif
