/*
 * spare_request_fuzz.c -- ember_spare_request() and ember_spare_putenv()
 * (src/ember/shepherd/spares.c) under -fsanitize=address,undefined, for
 * tests/test_template_spares.py.
 *
 *   spare_request_fuzz request CASES   each case (u32 little-endian length,
 *       then the bytes: the message; the same: the template's environment)
 *       read into buffers of exactly its size (a read past either's end is
 *       ASan's), one line out per case: "-1", or "0 NARGS off:len...
 *       | NSETS off:len... | NUNSETS off:len (of the environment)... | CWD"
 *       (CWD "nil" or off:len).
 *   spare_request_fuzz lease CASES     the same cases: one line each, "x" where
 *       ember_spare_request() refuses the case, else what
 *       ember_spare_lease_args() makes of it with the template's options
 *       "-B": "-1", or "TOKEN CALL RESULT" (each off:len).
 *   spare_request_fuzz b64 CASES       each case (u32 length, the text) decoded by
 *       ember_spare_b64_decode() into a buffer of exactly its size (from
 *       the text's length and padding): "-1", or the bytes in hex ("="
 *       for none).
 *   spare_request_fuzz putenv          the C environment made by
 *       ember_spare_putenv() (entries set and removed) over an environ of
 *       our own, then changed by
 *       setenv()/unsetenv() as os.environ does later: prints "ok: putenv".
 *
 * Prints "ok: N cases" first for request.  No processes, no shared memory:
 * a death costs nothing.
 */
#include "spares.c"

#include <stdio.h>

/* spares.c's fork path calls these; not run here (no libpython linked). */
void PyOS_BeforeFork(void) { abort(); }
void PyOS_AfterFork_Parent(void) { abort(); }
void PyOS_AfterFork_Child(void) { abort(); }

static char *_read_part(FILE *f, size_t *len)
{
    unsigned char h[4];
    char *buf;

    if (fread(h, 1, 4, f) != 4)
        return NULL;
    *len = (size_t)h[0] | ((size_t)h[1] << 8) | ((size_t)h[2] << 16) | ((size_t)h[3] << 24);
    buf = malloc(*len ? *len : 1);
    if (buf == NULL || fread(buf, 1, *len, f) != *len) {
        fprintf(stderr, "short case\n");
        exit(2);
    }
    return buf;
}

static int _request(const char *path)
{
    FILE *f = fopen(path, "rb"), *out = tmpfile();
    char *msg, *env, line[256];
    size_t mlen, elen, n = 0, i;

    if (f == NULL || out == NULL)
        return 2;
    while ((msg = _read_part(f, &mlen)) != NULL) {
        ember_spare_request_t r;
        if ((env = _read_part(f, &elen)) == NULL)
            return 2;
        /* exact-size copies: nothing past len is ours to read */
        char *m = malloc(mlen ? mlen : 1), *e = elen ? malloc(elen) : NULL;
        memcpy(m, msg, mlen);
        if (elen)
            memcpy(e, env, elen);
        if (ember_spare_request(m, mlen, e, elen, &r) != 0) {
            fputs("-1\n", out);
        } else {
            fprintf(out, "0 %zu", r.nargs);
            for (i = 0; i < r.nargs; i++)
                fprintf(out, " %zu:%zu", r.args[i].off, r.args[i].len);
            fprintf(out, " | %zu", r.nsets);
            for (i = 0; i < r.nsets; i++)
                fprintf(out, " %zu:%zu", r.sets[i].off, r.sets[i].len);
            fprintf(out, " | %zu", r.nunsets);
            for (i = 0; i < r.nunsets; i++)
                fprintf(out, " %zu:%zu", r.unsets[i].off, r.unsets[i].len);
            if (r.cwd_nil)
                fputs(" | nil\n", out);
            else
                fprintf(out, " | %zu:%zu\n", r.cwd.off, r.cwd.len);
        }
        free(m);
        free(e);
        free(msg);
        free(env);
        n++;
    }
    fclose(f);
    printf("ok: %zu cases\n", n);
    rewind(out);
    while (fgets(line, sizeof line, out) != NULL)
        fputs(line, stdout);
    fclose(out);
    return 0;
}

static int _lease(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *msg, *env;
    size_t mlen, elen, n = 0;

    if (f == NULL)
        return 2;
    while ((msg = _read_part(f, &mlen)) != NULL) {
        ember_spare_request_t r;
        ember_spare_span_t tok, call, res;
        if ((env = _read_part(f, &elen)) == NULL)
            return 2;
        char *m = malloc(mlen ? mlen : 1), *e = elen ? malloc(elen) : NULL;
        memcpy(m, msg, mlen);
        if (elen)
            memcpy(e, env, elen);
        if (ember_spare_request(m, mlen, e, elen, &r) != 0)
            puts("x");
        else if (ember_spare_lease_args(m, &r, "-B", 2, &tok, &call, &res) != 0)
            puts("-1");
        else
            printf("%zu:%zu %zu:%zu %zu:%zu\n", tok.off, tok.len, call.off, call.len, res.off,
                   res.len);
        free(m);
        free(e);
        free(msg);
        free(env);
        n++;
    }
    fclose(f);
    return n ? 0 : 2;
}

static int _b64(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text;
    size_t len;

    if (f == NULL)
        return 2;
    while ((text = _read_part(f, &len)) != NULL) {
        size_t size = len / 4 * 3, pad = 0;
        if (len && text[len - 1] == '=')
            pad = len >= 2 && text[len - 2] == '=' ? 2 : 1;
        size = size >= pad ? size - pad : 0;
        unsigned char *out = malloc(size ? size : 1);
        char *t = malloc(len ? len : 1);          /* exact size */
        memcpy(t, text, len);
        long k = ember_spare_b64_decode(t, len, out, size);
        if (k < 0) {
            puts("-1");
        } else if (k == 0) {
            puts("=");
        } else {
            for (long i = 0; i < k; i++)
                printf("%02x", out[i]);
            putchar('\n');
        }
        free(out);
        free(t);
        free(text);
    }
    fclose(f);
    return 0;
}

static int _putenv(void)
{
    extern char **environ;
    static char a[] = "A=1", b[] = "B=2", ab[] = "AB=3";
    char *mine[] = {a, b, ab, NULL};
    char *sets[] = {strdup("B=x=y"), strdup("C="), strdup("A=")};
    char **before;

    environ = mine;
    if (ember_spare_putenv(sets, 3) != 0)
        return 1;
    if (environ == mine || mine[1] != b)        /* a new array; the old one untouched */
        return 1;
    if (strcmp(getenv("A"), "") || strcmp(getenv("B"), "x=y") || strcmp(getenv("AB"), "3")
            || strcmp(getenv("C"), "") || environ[4] != NULL)
        return 1;
    before = environ;
    if (ember_spare_putenv(sets, 0) != 0 || environ == before || environ[4] != NULL)
        return 1;
    /* what os.environ does later: glibc's own functions over our array */
    if (setenv("D", "4", 1) || setenv("B", "5", 1) || unsetenv("A"))
        return 1;
    if (getenv("A") != NULL || strcmp(getenv("B"), "5") || strcmp(getenv("D"), "4")
            || strcmp(getenv("AB"), "3") || strcmp(getenv("C"), ""))
        return 1;
    environ = NULL;                              /* an empty environment */
    if (ember_spare_putenv(sets, 1) != 0 || strcmp(getenv("B"), "x=y") || environ[1] != NULL)
        return 1;
    /* "K" removes K (none: nothing), "B" not "BX"'s prefix */
    char *rm[] = {strdup("BX=1"), strdup("B"), strdup("ZZ"), strdup("A=9")};
    if (ember_spare_putenv(rm, 4) != 0 || getenv("B") != NULL || strcmp(getenv("BX"), "1")
            || strcmp(getenv("A"), "9") || environ[2] != NULL)
        return 1;
    puts("ok: putenv");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "request") == 0)
        return _request(argv[2]);
    if (argc == 3 && strcmp(argv[1], "lease") == 0)
        return _lease(argv[2]);
    if (argc == 3 && strcmp(argv[1], "b64") == 0)
        return _b64(argv[2]);
    if (argc == 2 && strcmp(argv[1], "putenv") == 0)
        return _putenv();
    fprintf(stderr, "usage: %s request CASES | lease CASES | b64 CASES | putenv\n", argv[0]);
    return 2;
}
