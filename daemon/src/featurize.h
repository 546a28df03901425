/*
 * featurize.h - cohortd featurize: events from files through the daemon's own decode,
 * validation and feature code, one row per event (README "Featurize: features from
 * history").
 */
#ifndef CH_FEATURIZE_H
#define CH_FEATURIZE_H

/**
 * @brief The featurize mode: argv[0] is "featurize".
 * @returns the exit status: 0 done, 1 bad input (without --skip-bad) or an I/O error,
 *          2 a usage or configuration error.
 */
int ch_featurize_main(int argc, char **argv);

#endif
