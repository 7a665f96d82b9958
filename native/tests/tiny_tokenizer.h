// A tokenizer.bin of `vocab` tokens for the native tests and the fuzz target: the 3
// specials, the 256 byte tokens, a space, then two-letter merges scored by rank.
#ifndef STORYBOT_TINY_TOKENIZER_H
#define STORYBOT_TINY_TOKENIZER_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static inline void write_tiny_tokenizer(FILE *f, int vocab) {
    int32_t max_len = 6;
    fwrite(&max_len, 4, 1, f);
    for (int i = 0; i < vocab; i++) {
        char s[16];
        if (i < 3) snprintf(s, sizeof s, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else if (i < 259) snprintf(s, sizeof s, "<0x%02X>", i - 3);
        else if (i == 259) snprintf(s, sizeof s, " ");
        else snprintf(s, sizeof s, "%c%c", 'a' + i % 26, 'a' + (i / 26) % 26);
        float score = (float)-i;
        int32_t len = (int32_t)strlen(s);
        fwrite(&score, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(s, 1, (size_t)len, f);
    }
}

#endif
