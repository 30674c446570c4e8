/*
 * ringdb_send: send samples to ringdb's binary socket (YAWNDB v3 protocol)
 * over mutual TLS. OpenSSL 3.
 *
 *   ringdb_send --host H --port P --ca CA --cert CERT --key KEY
 *               [--server-name NAME] [FILE]
 *   ringdb_send --self-test
 *
 * Input lines (FILE or stdin): PATH TIMESTAMP VALUE, separated by blanks.
 * VALUE is a decimal unsigned integer, or @N for special index N (1-based
 * index into the rule's additional_values). Blank lines and lines whose first
 * non-blank character is '#' are skipped. The whole input is parsed before
 * anything is sent.
 *
 * Exit status: 0 sent ("sent N frames" on stderr); 1 connection, TLS or
 * write failure; 2 usage error, unreadable input or a bad line
 * ("line K: ..." on stderr, nothing sent).
 *
 * Frame: u16 BE length + payload; payload: u8 version (3) | u8 special |
 * u64 BE timestamp | u64 BE value | path (1..1024 bytes UTF-8, no '/').
 *
 * Build: cc -O2 -Wall -Wextra -o ringdb_send ringdb_send.c -lssl -lcrypto
 */

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define RINGDB_VERSION 3
#define RINGDB_MAX_PATH 1024
#define RINGDB_PAYLOAD_FIXED 18                       /* version..value */
#define RINGDB_MAX_FRAME (2 + RINGDB_PAYLOAD_FIXED + RINGDB_MAX_PATH)
#define MAX_LINE 2048                                 /* bytes, without newline */
#define BATCH_BYTES 65536
#define IO_TIMEOUT_MS 30000
#define REJECT_WAIT_MIN_MS 50   /* TLS 1.3 wait for a rejection alert, see send_all() */
#define REJECT_WAIT_MAX_MS 1000

static const char *prog = "ringdb_send";

/* ------------------------------------------------------------------ */
/* Encoder                                                             */
/* ------------------------------------------------------------------ */

/* Strict UTF-8 check (no overlongs, no surrogates, max U+10FFFF). */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xFF);
        v >>= 8;
    }
}

/*
 * Write one length-prefixed frame for (path, ts, value, special) into out.
 * path is a NUL-terminated string: 1..1024 bytes of valid UTF-8 without '/'.
 * special != 0 sets the special flag (value is then a 1-based index).
 * Returns the frame size (20 + strlen(path)), or 0 if the path is invalid or
 * cap is too small.
 */
size_t ringdb_encode_frame(uint8_t *out, size_t cap, const char *path,
                           uint64_t ts, uint64_t value, int special)
{
    if (out == NULL || path == NULL)
        return 0;
    size_t plen = strnlen(path, RINGDB_MAX_PATH + 1);
    if (plen == 0 || plen > RINGDB_MAX_PATH)
        return 0;
    if (memchr(path, '/', plen) != NULL || !utf8_valid((const uint8_t *)path, plen))
        return 0;
    size_t payload = RINGDB_PAYLOAD_FIXED + plen;
    size_t total = 2 + payload;
    if (cap < total)
        return 0;
    out[0] = (uint8_t)(payload >> 8);
    out[1] = (uint8_t)(payload & 0xFF);
    out[2] = RINGDB_VERSION;
    out[3] = special ? 1 : 0;
    put_u64(out + 4, ts);
    put_u64(out + 12, value);
    memcpy(out + 20, path, plen);
    return total;
}

static int self_test(void)
{
    static const uint8_t want_head[20] = {
        0x00, 0x25, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x72,
        0xb9, 0x6d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
    };
    const char *vpath = "interface_in-ae0.69";
    uint8_t buf[RINGDB_MAX_FRAME + 8];
    char longp[RINGDB_MAX_PATH + 2];
    int fails = 0;

#define CHECK(cond, what)                                      \
    do {                                                       \
        if (!(cond)) {                                         \
            fprintf(stderr, "self-test FAILED: %s\n", what);   \
            fails++;                                           \
        }                                                      \
    } while (0)

    size_t n = ringdb_encode_frame(buf, sizeof buf, vpath, 1349695853u, 1024u, 0);
    CHECK(n == 39, "test vector length is 39");
    CHECK(n == 39 && memcmp(buf, want_head, 20) == 0 && memcmp(buf + 20, vpath, 19) == 0,
          "test vector bytes");
    CHECK(ringdb_encode_frame(buf, 38, vpath, 1349695853u, 1024u, 0) == 0,
          "too small buffer is refused");
    n = ringdb_encode_frame(buf, sizeof buf, "a", UINT64_MAX, 2, 1);
    CHECK(n == 21 && buf[0] == 0 && buf[1] == 19 && buf[3] == 1 && buf[4] == 0xFF &&
              buf[11] == 0xFF && buf[19] == 2 && buf[20] == 'a',
          "special flag, max timestamp");
    CHECK(ringdb_encode_frame(buf, sizeof buf, "", 1, 1, 0) == 0, "empty path is refused");
    CHECK(ringdb_encode_frame(buf, sizeof buf, "a/b", 1, 1, 0) == 0, "'/' is refused");
    CHECK(ringdb_encode_frame(buf, sizeof buf, "\xff", 1, 1, 0) == 0, "bad UTF-8 is refused");
    CHECK(ringdb_encode_frame(buf, sizeof buf, "\xed\xa0\x80", 1, 1, 0) == 0,
          "UTF-8 surrogate is refused");
    CHECK(ringdb_encode_frame(buf, sizeof buf, "\xc3\xa9", 1, 1, 0) == 22, "UTF-8 accepted");
    memset(longp, 'a', RINGDB_MAX_PATH);
    longp[RINGDB_MAX_PATH] = '\0';
    n = ringdb_encode_frame(buf, sizeof buf, longp, 1, 1, 0);
    CHECK(n == RINGDB_MAX_FRAME && buf[0] == 0x04 && buf[1] == 0x12, "1024-byte path accepted");
    longp[RINGDB_MAX_PATH] = 'a';
    longp[RINGDB_MAX_PATH + 1] = '\0';
    CHECK(ringdb_encode_frame(buf, sizeof buf, longp, 1, 1, 0) == 0, "1025-byte path refused");
#undef CHECK

    if (fails)
        return 1;
    fprintf(stderr, "self-test ok\n");
    return 0;
}

/* ------------------------------------------------------------------ */
/* Input                                                               */
/* ------------------------------------------------------------------ */

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static int bytes_reserve(struct bytes *b, size_t more)
{
    if (b->cap - b->len >= more)
        return 0;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap - b->len < more) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int is_blank(int c)
{
    /* Same set as C isspace() in the "C" locale and Python bytes.split(). */
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Strict decimal u64: ASCII digits only, no sign, fits in 64 bits. */
static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Quote a token for an error message: at most 40 bytes, bytes outside
 * printable ASCII as \xNN (the Python client prints the same). */
static void show_token(const char *tok)
{
    size_t n = strlen(tok);
    fputc('\'', stderr);
    for (size_t i = 0; i < n && i < 40; i++) {
        unsigned char c = (unsigned char)tok[i];
        if (c >= 0x20 && c < 0x7F)
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fputs(n > 40 ? "...'" : "'", stderr);
}

/*
 * Parse one line (without its newline, NUL-terminated). Appends a
 * frame to frames, or nothing for a blank/comment line. Returns 1 if a frame
 * was added, 0 if skipped, -1 after printing "line K: ..." for a bad line,
 * -2 when out of memory.
 */
static int parse_line(char *line, unsigned long lineno, struct bytes *frames)
{
    char *field[4];
    int nf = 0;
    char *p = line;

    while (*p && is_blank((unsigned char)*p))
        p++;
    if (*p == '\0' || *p == '#')
        return 0;
    p = line;
    for (;;) {
        while (*p && is_blank((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        if (nf < 4)
            field[nf] = p;
        nf++;
        while (*p && !is_blank((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        *p++ = '\0';
    }
    if (nf != 3) {
        fprintf(stderr, "line %lu: expected 3 fields PATH TIMESTAMP VALUE, got %d\n", lineno, nf);
        return -1;
    }
    const char *path = field[0];
    size_t plen = strlen(path);
    if (plen > RINGDB_MAX_PATH) {
        fprintf(stderr, "line %lu: expected PATH of 1..%d bytes, got %zu bytes\n", lineno,
                RINGDB_MAX_PATH, plen);
        return -1;
    }
    if (strchr(path, '/') != NULL) {
        fprintf(stderr, "line %lu: expected PATH without '/'\n", lineno);
        return -1;
    }
    if (!utf8_valid((const uint8_t *)path, plen)) {
        fprintf(stderr, "line %lu: expected PATH in valid UTF-8\n", lineno);
        return -1;
    }
    uint64_t ts, value;
    if (parse_u64(field[1], &ts) != 0) {
        fprintf(stderr,
                "line %lu: expected TIMESTAMP as a decimal unsigned integer below 2^64, got ",
                lineno);
        show_token(field[1]);
        fputc('\n', stderr);
        return -1;
    }
    int special = field[2][0] == '@';
    if (parse_u64(field[2] + (special ? 1 : 0), &value) != 0 || (special && value == 0)) {
        fprintf(stderr,
                "line %lu: expected VALUE as a decimal unsigned integer below 2^64 or @N "
                "with N >= 1, got ",
                lineno);
        show_token(field[2]);
        fputc('\n', stderr);
        return -1;
    }
    if (bytes_reserve(frames, RINGDB_MAX_FRAME) != 0)
        return -2;
    size_t n = ringdb_encode_frame(frames->p + frames->len, frames->cap - frames->len, path, ts,
                                   value, special);
    if (n == 0) { /* cannot happen: the path was checked above */
        fprintf(stderr, "line %lu: expected a valid PATH\n", lineno);
        return -1;
    }
    frames->len += n;
    return 1;
}

/*
 * Read and parse the whole input. Lines are split on '\n'; a trailing '\r'
 * is dropped. Lines longer than MAX_LINE bytes are errors (read to their
 * end without being stored). Returns 0 and the frame count, or the exit
 * status (2) after printing the error.
 */
static int parse_input(FILE *in, struct bytes *frames, unsigned long *count)
{
    char line[MAX_LINE + 2];
    unsigned long lineno = 0;
    *count = 0;

    for (;;) {
        size_t len = 0; /* bytes before '\n', all counted, at most sizeof line - 1 stored */
        int c, nul = 0, got_any = 0, last = -1;
        while ((c = getc(in)) != EOF) {
            got_any = 1;
            if (c == '\n')
                break;
            if (c == '\0')
                nul = 1;
            if (len < sizeof line - 1)
                line[len] = (char)c;
            if (len < SIZE_MAX)
                len++;
            last = c;
        }
        if (ferror(in)) {
            fprintf(stderr, "%s: cannot read input: %s\n", prog, strerror(errno));
            return 2;
        }
        if (!got_any)
            break; /* EOF */
        lineno++;
        if (last == '\r')
            len--; /* CRLF line ending */
        if (len > MAX_LINE) {
            fprintf(stderr, "line %lu: expected a line of at most %d bytes, got %zu bytes\n",
                    lineno, MAX_LINE, len);
            return 2;
        }
        line[len] = '\0';
        if (nul) {
            fprintf(stderr, "line %lu: expected text without NUL bytes\n", lineno);
            return 2;
        }
        int r = parse_line(line, lineno, frames);
        if (r == -1)
            return 2;
        if (r == -2) {
            fprintf(stderr, "%s: out of memory\n", prog);
            return 1;
        }
        *count += (unsigned long)r;
        if (c == EOF)
            break;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* TLS                                                                 */
/* ------------------------------------------------------------------ */

/*
 * Describe why an SSL_* call failed (err from SSL_get_error, errno as it was
 * right after the call) into buf, and clear the OpenSSL error queue.
 */
static void describe(SSL *ssl, int err, int saved_errno, char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && e == 0))
        snprintf(buf, len, "%s",
                 err == SSL_ERROR_SYSCALL && saved_errno ? strerror(saved_errno)
                                                         : "connection closed by peer");
    else if (e != 0)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "TLS error %d", err);
    if (ssl != NULL) {
        long vr = SSL_get_verify_result(ssl);
        size_t used = strlen(buf);
        if (vr != X509_V_OK && used < len)
            snprintf(buf + used, len - used, " (certificate: %s)",
                     X509_verify_cert_error_string(vr));
    }
    ERR_clear_error();
}

/* Print "ringdb_send: WHAT: reason" from the OpenSSL error queue. */
static void tls_error(const char *what, SSL *ssl)
{
    char buf[512];
    describe(ssl, SSL_ERROR_SSL, 0, buf, sizeof buf);
    fprintf(stderr, "%s: %s: %s\n", prog, what, buf);
}

/*
 * After an SSL_* call returned ret <= 0: wait for the socket if OpenSSL wants
 * I/O (returns 0, caller retries), else report the error (returns -1).
 */
static int tls_wait(SSL *ssl, int fd, int ret, const char *what)
{
    int saved_errno = errno;
    int err = SSL_get_error(ssl, ret);
    struct pollfd pfd = {.fd = fd, .events = 0, .revents = 0};

    if (err == SSL_ERROR_WANT_READ)
        pfd.events = POLLIN;
    else if (err == SSL_ERROR_WANT_WRITE)
        pfd.events = POLLOUT;

    if (pfd.events != 0) {
        int r;
        do {
            r = poll(&pfd, 1, IO_TIMEOUT_MS);
        } while (r < 0 && errno == EINTR);
        if (r > 0)
            return 0;
        fprintf(stderr, "%s: %s: %s\n", prog, what, r == 0 ? "timed out" : strerror(errno));
        return -1;
    }
    char buf[512];
    describe(ssl, err, saved_errno, buf, sizeof buf);
    fprintf(stderr, "%s: %s: %s\n", prog, what, buf);
    return -1;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Consume what the server sends within wait_ms and report (returning -1)
 * if it dropped the connection: a TLS alert, a reset, an EOF. Returns 0 if
 * nothing went wrong. ringdb sends nothing after the handshake unless it
 * rejects the client; other TLS servers may send TLS 1.3 session tickets,
 * and consuming them keeps close() from turning into a TCP reset.
 */
static int server_verdict(SSL *ssl, int fd, long wait_ms, const char *what)
{
    char sink[4096];
    long deadline = now_ms() + wait_ms;
    for (;;) {
        size_t got = 0;
        ERR_clear_error();
        errno = 0;
        int r = SSL_read_ex(ssl, sink, sizeof sink, &got);
        int saved_errno = errno;
        if (r == 1)
            continue; /* application data: ringdb never sends any; discard */
        int err = SSL_get_error(ssl, r);
        if (err == SSL_ERROR_WANT_READ) {
            long left = deadline - now_ms();
            if (left <= 0)
                return 0;
            struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
            int pr = poll(&pfd, 1, (int)left);
            if (pr == 0)
                return 0;
            if (pr < 0 && errno != EINTR)
                return 0;
            continue;
        }
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_ZERO_RETURN)
            return 0; /* ZERO_RETURN: the server closed cleanly */
        if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 &&
            (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == EINTR))
            return 0;
        char buf[512];
        describe(ssl, err, saved_errno, buf, sizeof buf);
        fprintf(stderr, "%s: %s: %s\n", prog, what, buf);
        return -1;
    }
}

static int is_ip_literal(const char *s)
{
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* TCP connect to host:port (IPv4 or IPv6); returns fd or -1. */
static int tcp_connect(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot resolve %s: %s\n", prog, host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, last_errno = 0;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        /* On Linux SO_SNDTIMEO also bounds connect(). */
        struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000, .tv_usec = 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        last_errno = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "%s: cannot connect to %s port %s: %s\n", prog, host, port,
                strerror(last_errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        fprintf(stderr, "%s: fcntl: %s\n", prog, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Report a TLS file that cannot be opened at all, with the system reason. */
static int readable(const char *what, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "%s: cannot load %s %s: %s\n", prog, what, path, strerror(errno));
        return 0;
    }
    fclose(f);
    return 1;
}

static SSL_CTX *make_ctx(const char *ca, const char *cert, const char *key)
{
    if (!readable("CA file", ca) || !readable("certificate", cert) || !readable("key", key))
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        tls_error("SSL_CTX_new", NULL);
        return NULL;
    }
    char what[4200];
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        tls_error("cannot require TLS 1.2+", NULL);
        goto fail;
    }
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        snprintf(what, sizeof what, "cannot load CA file %s", ca);
        tls_error(what, NULL);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(what, sizeof what, "cannot load certificate %s", cert);
        tls_error(what, NULL);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof what, "cannot load key %s", key);
        tls_error(what, NULL);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(what, sizeof what, "key %s does not match certificate %s", key, cert);
        tls_error(what, NULL);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/*
 * Connect, handshake (verifying the server certificate against the CA and
 * server_name), write all frames in batches, close. Returns the exit status.
 */
static int send_all(const char *host, const char *port, const char *server_name,
                    const char *ca, const char *cert, const char *key,
                    const struct bytes *frames)
{
    int status = 1, fd = -1;
    SSL *ssl = NULL;
    SSL_CTX *ctx = make_ctx(ca, cert, key);
    if (ctx == NULL)
        return 1;
    ssl = SSL_new(ctx);
    if (ssl == NULL) {
        tls_error("SSL_new", NULL);
        goto out;
    }
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    if (is_ip_literal(server_name)) {
        /* Matched against IP SANs; no SNI for IP literals. */
        if (X509_VERIFY_PARAM_set1_ip_asc(param, server_name) != 1) {
            tls_error("cannot set server IP address to verify", NULL);
            goto out;
        }
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(ssl, server_name) != 1 ||
            SSL_set_tlsext_host_name(ssl, server_name) != 1) {
            tls_error("cannot set server name to verify", NULL);
            goto out;
        }
    }

    fd = tcp_connect(host, port);
    if (fd < 0)
        goto out;
    if (SSL_set_fd(ssl, fd) != 1) {
        tls_error("SSL_set_fd", NULL);
        goto out;
    }

    char what[512];
    snprintf(what, sizeof what, "TLS handshake with %s port %s failed", host, port);
    long t0 = now_ms();
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        if (tls_wait(ssl, fd, r, what) != 0)
            goto out;
    }
    long handshake_ms = now_ms() - t0;

    snprintf(what, sizeof what, "write to %s port %s failed", host, port);
    size_t off = 0;
    while (off < frames->len) {
        size_t n = frames->len - off;
        if (n > BATCH_BYTES)
            n = BATCH_BYTES;
        size_t written = 0;
        ERR_clear_error();
        errno = 0;
        int r = SSL_write_ex(ssl, frames->p + off, n, &written);
        if (r == 1) {
            off += written; /* partial writes are allowed; continue after them */
            continue;
        }
        int saved_errno = errno;
        int err = SSL_get_error(ssl, r);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            /* A write fails when the server has dropped the connection; if
             * it said why (an alert, e.g. for our certificate), show that. */
            char buf[512];
            describe(ssl, err, saved_errno, buf, sizeof buf);
            if (server_verdict(ssl, fd, 0, what) == 0)
                fprintf(stderr, "%s: %s: %s\n", prog, what, buf);
            goto out;
        }
        /* Retry with the same buffer and length, as OpenSSL requires. */
        errno = saved_errno;
        if (tls_wait(ssl, fd, r, what) != 0)
            goto out;
    }

    /*
     * Under TLS 1.3 the server checks the client certificate only after our
     * side of the handshake is over; it says no with an alert and says
     * nothing when it says yes. So wait for such an alert for twice the
     * handshake time (50 ms .. 1 s); under TLS 1.2 only look at what has
     * already arrived. Nothing else is read: the server never replies.
     */
    {
        long wait_ms = 0;
        if (SSL_version(ssl) >= TLS1_3_VERSION) {
            wait_ms = 2 * handshake_ms;
            wait_ms = wait_ms < REJECT_WAIT_MIN_MS ? REJECT_WAIT_MIN_MS
                    : wait_ms > REJECT_WAIT_MAX_MS ? REJECT_WAIT_MAX_MS : wait_ms;
        }
        snprintf(what, sizeof what, "%s port %s rejected the connection", host, port);
        if (server_verdict(ssl, fd, wait_ms, what) != 0)
            goto out;
    }
    /* Send close_notify without waiting for the server's, then close. */
    ERR_clear_error();
    SSL_shutdown(ssl);
    ERR_clear_error();
    status = 0;
out:
    if (ssl != NULL)
        SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
    return status;
}

/* ------------------------------------------------------------------ */
/* Main                                                                */
/* ------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ringdb_send --host H --port P --ca CA --cert CERT --key KEY\n"
            "                   [--server-name NAME] [FILE]\n"
            "       ringdb_send --self-test\n"
            "\n"
            "Sends samples to ringdb's binary socket (YAWNDB v3) over mutual TLS.\n"
            "Input (FILE or stdin, '-' = stdin): lines PATH TIMESTAMP VALUE, where VALUE\n"
            "is an unsigned integer or @N (special index N, 1-based). Blank lines and\n"
            "lines starting with '#' are skipped. The server certificate is verified\n"
            "against CA and NAME (default: H).\n"
            "Exit: 0 sent; 1 connection/TLS failure; 2 usage or input error.\n");
}

int main(int argc, char **argv)
{
    const char *host = NULL, *port = NULL, *ca = NULL, *cert = NULL, *key = NULL;
    const char *server_name = NULL, *file = NULL;
    struct {
        const char *name;
        const char **dst;
    } opts[] = {
        {"--host", &host}, {"--port", &port}, {"--ca", &ca}, {"--cert", &cert},
        {"--key", &key},   {"--server-name", &server_name},
    };
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    int only_files = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_files || a[0] != '-' || strcmp(a, "-") == 0) {
            if (file != NULL) {
                fprintf(stderr, "%s: more than one FILE given\n", prog);
                usage(stderr);
                return 2;
            }
            file = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_files = 1;
            continue;
        }
        if (strcmp(a, "--self-test") == 0)
            return self_test();
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        int matched = 0;
        for (int k = 0; k < nopts; k++) {
            size_t nl = strlen(opts[k].name);
            if (strncmp(a, opts[k].name, nl) != 0)
                continue;
            if (a[nl] == '=') {
                *opts[k].dst = a + nl + 1;
            } else if (a[nl] == '\0') {
                if (i + 1 >= argc) {
                    fprintf(stderr, "%s: %s needs a value\n", prog, a);
                    usage(stderr);
                    return 2;
                }
                *opts[k].dst = argv[++i];
            } else {
                continue;
            }
            matched = 1;
            break;
        }
        if (!matched) {
            fprintf(stderr, "%s: unknown option %s\n", prog, a);
            usage(stderr);
            return 2;
        }
    }
    const char *missing = !host ? "--host" : !port ? "--port" : !ca ? "--ca"
                        : !cert ? "--cert" : !key ? "--key" : NULL;
    if (missing != NULL) {
        fprintf(stderr, "%s: %s is required\n", prog, missing);
        usage(stderr);
        return 2;
    }
    {
        uint64_t pn;
        if (parse_u64(port, &pn) != 0 || pn < 1 || pn > 65535) {
            fprintf(stderr, "%s: --port must be a number in 1..65535, got '%s'\n", prog, port);
            return 2;
        }
    }
    if (server_name == NULL || server_name[0] == '\0')
        server_name = host;

    FILE *in = stdin;
    if (file != NULL && strcmp(file, "-") != 0) {
        in = fopen(file, "rb");
        if (in == NULL) {
            fprintf(stderr, "%s: cannot read input %s: %s\n", prog, file, strerror(errno));
            return 2;
        }
    }
    struct bytes frames = {NULL, 0, 0};
    unsigned long count = 0;
    int status = parse_input(in, &frames, &count);
    if (in != stdin)
        fclose(in);
    if (status != 0) {
        free(frames.p);
        return status;
    }

    signal(SIGPIPE, SIG_IGN); /* a closed connection is an error return, not a signal */
    status = send_all(host, port, server_name, ca, cert, key, &frames);
    free(frames.p);
    if (status == 0)
        fprintf(stderr, "sent %lu frames\n", count);
    return status;
}
