/* main.c: storybot-run, a drop-in for llama2.c's `run` in generate mode.
 *
 *     storybot-run MODEL [-t T] [-p P] [-s S] [-n N] [-i PROMPT] [-z TOKENIZER] [-m generate]
 *
 * stdout is the reference's, byte for byte; stderr ends with its "achieved tok/s" line.
 * Unlike the reference, values it would silently replace (a negative temperature, a
 * top-p outside [0, 1], negative steps, text where a number belongs) are errors.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "storybot.h"

static int usage(const char *why) {
    if (why) fprintf(stderr, "error: %s\n", why);
    fprintf(stderr,
            "Usage:   storybot-run <checkpoint> [options]\n"
            "Example: storybot-run model.bin -n 256 -i \"Once upon a time\"\n"
            "Options:\n"
            "  -t <float>  temperature in [0,inf], default 1.0\n"
            "  -p <float>  p value in top-p (nucleus) sampling in [0,1] default 0.9\n"
            "  -s <int>    random seed, default time(NULL)\n"
            "  -n <int>    number of steps to run for, default 256. 0 = max_seq_len\n"
            "  -i <string> input prompt\n"
            "  -z <string> optional path to custom tokenizer\n"
            "  -m <string> mode: generate (chat is not supported)\n"
            "  -y <string> system prompt (chat mode only; ignored)\n"
            "  -j <int>    threads, default 1\n"
            "  -k <string> kernels: auto|generic, default auto\n"
            "  -c <string> KV cache: auto|fp32|fp16, default auto (fp16 for quantized models on x86)\n"
            "  -o <string> also write the token ids, one per line, to this file\n");
    return EXIT_FAILURE;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE) return 0;
    *out = v;
    return 1;
}

static int parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE || v < INT_MIN || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(NULL);
    const char *model = argv[1], *tokenizer = "tokenizer.bin", *prompt = NULL, *ids_path = NULL;
    sb_params p = sb_default_params();
    int seed = 0;
    char msg[160];
    for (int i = 2; i < argc; i += 2) {
        if (argv[i][0] != '-' || strlen(argv[i]) != 2) {
            snprintf(msg, sizeof msg, "expected a flag like -t, got '%s'", argv[i]);
            return usage(msg);
        }
        if (i + 1 >= argc) {
            snprintf(msg, sizeof msg, "flag %s needs a value", argv[i]);
            return usage(msg);
        }
        const char *v = argv[i + 1];
        int ok = 1;
        switch (argv[i][1]) {
        case 't': ok = parse_float(v, &p.temperature); break;
        case 'p': ok = parse_float(v, &p.topp); break;
        case 's': ok = parse_int(v, &seed); break;
        case 'n': ok = parse_int(v, &p.steps); break;
        case 'j': ok = parse_int(v, &p.n_threads); break;
        case 'i': prompt = v; break;
        case 'z': tokenizer = v; break;
        case 'y': break;
        case 'o': ids_path = v; break;
        case 'm': ok = strcmp(v, "generate") == 0; break;
        case 'c':
            ok = strcmp(v, "auto") == 0 || strcmp(v, "fp32") == 0 || strcmp(v, "fp16") == 0;
            p.kv_fp16 = strcmp(v, "fp16") == 0 ? 1 : strcmp(v, "fp32") == 0 ? 0 : -1;
            break;
        case 'k':
            ok = strcmp(v, "auto") == 0 || strcmp(v, "generic") == 0;
            p.kernels = strcmp(v, "generic") == 0 ? SB_KERNELS_GENERIC : SB_KERNELS_AUTO;
            break;
        default:
            snprintf(msg, sizeof msg, "unknown flag %s", argv[i]);
            return usage(msg);
        }
        if (!ok) {
            snprintf(msg, sizeof msg, "bad value '%s' for %s", v, argv[i]);
            return usage(msg);
        }
    }
    // as the reference: 0 means the clock, and the int seed widens to 64 bits
    p.seed = seed == 0 ? (uint64_t)(unsigned int)time(NULL) : (uint64_t)(int64_t)seed;

    char err[256];
    sb_context *ctx = NULL;
    if (sb_open(model, tokenizer, &p, &ctx, err, sizeof err) != SB_OK) {
        fprintf(stderr, "error: %s\n", err);
        return EXIT_FAILURE;
    }
    if (sb_start(ctx, 1, prompt) != SB_OK) {
        fprintf(stderr, "error: %s\n", sb_last_error(ctx));
        sb_free(ctx);
        return EXIT_FAILURE;
    }
    FILE *ids = NULL;
    if (ids_path && !(ids = fopen(ids_path, "w"))) {
        fprintf(stderr, "error: cannot write %s: %s\n", ids_path, strerror(errno));
        sb_free(ctx);
        return EXIT_FAILURE;
    }
    // the clock starts after the first position, which can be slower (as the reference)
    double start = 0.0;
    sb_token tok;
    sb_status s;
    while ((s = sb_next(ctx, &tok)) == SB_OK) {
        if (!(tok.flags & SB_PIECE_UNPRINTABLE)) fwrite(tok.piece, 1, tok.piece_len, stdout);
        if (ids) fprintf(ids, "%d\n", tok.id);
        fflush(stdout);
        if (start == 0.0) start = now_seconds();
    }
    printf("\n");
    fflush(stdout);
    int status = EXIT_SUCCESS;
    if (s != SB_END) {
        fprintf(stderr, "error: %s\n", sb_last_error(ctx));
        status = EXIT_FAILURE;
    } else if (tok.pos > 1) {
        fprintf(stderr, "achieved tok/s: %f\n", (tok.pos - 1) / (now_seconds() - start));
    }
    if (ids && fclose(ids) != 0) {
        fprintf(stderr, "error: cannot write %s\n", ids_path);
        status = EXIT_FAILURE;
    }
    sb_free(ctx);
    return status;
}
