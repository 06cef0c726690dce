/* Minimal assertion helpers shared by the C tests. */
#ifndef RSERPOOL_TEST_UTIL_H
#define RSERPOOL_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures = 0;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            test_failures++;                                                 \
        }                                                                    \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                   \
    do {                                                                     \
        long long va_ = (long long)(a), vb_ = (long long)(b);               \
        if (va_ != vb_) {                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", \
                    __FILE__, __LINE__, #a, #b, va_, vb_);                   \
            test_failures++;                                                 \
        }                                                                    \
    } while (0)

#define TEST_DONE(name)                                                      \
    do {                                                                     \
        if (test_failures) {                                                 \
            fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures); \
            return 1;                                                        \
        }                                                                    \
        printf("%s: ok\n", name);                                            \
        return 0;                                                            \
    } while (0)

#endif
