/* Low-overhead helper for scripts/bench.sh.
 *
 *   benchhelper stat   LIST        lstat() every path in LIST (one per line)
 *   benchhelper read   LIST        open/read/close every file in LIST
 *   benchhelper create DIR N SIZE  create+write SIZE bytes+close N files in DIR, then unlink them
 *   benchhelper rename LIST        rename(p, p + ".renamed") for every path in LIST
 *   benchhelper append FILE        append one byte to FILE (forces a copy-up)
 *   benchhelper appendlist LIST    append one byte to every file in LIST
 *   benchhelper mkfiles DIR N SIZE create+write SIZE bytes+close N files in DIR (kept)
 *   benchhelper walk DIR           readdir every directory under DIR, lstat every entry
 *
 * Paths in LIST are relative; they are resolved against the current directory.
 * Prints "ok=N missing=N failed=N" on stdout; exits 1 if anything failed
 * unexpectedly (for `stat`, ENOENT counts as "missing", not as a failure).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static char buf[1 << 20];

static FILE *open_list(const char *p) {
    FILE *f = fopen(p, "r");
    if (!f) { perror(p); exit(2); }
    return f;
}

/* Appends one byte to `path`; 0 on success. */
static int append_one(const char *path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW);
    if (fd < 0) return -1;
    if (write(fd, "x", 1) != 1) { close(fd); return -1; }
    return close(fd);
}

/* Reads every directory under the directory `dfd` (which it closes) and
 * lstats every entry through its parent's descriptor, depth first. */
static void walk(int dfd, long *ok, long *failed) {
    DIR *d = fdopendir(dfd);
    if (!d) { (*failed)++; close(dfd); return; }
    struct dirent *e;
    struct stat st;
    while ((errno = 0, e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW)) {
            if (++*failed < 5) perror(e->d_name);
            continue;
        }
        (*ok)++;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            if (sub < 0) { if (++*failed < 5) perror(e->d_name); continue; }
            walk(sub, ok, failed);
        }
    }
    if (errno) (*failed)++;
    closedir(d);
}

static void chomp(char *s) {
    size_t n = strlen(s);
    if (n && s[n - 1] == '\n') s[n - 1] = 0;
}

int main(int argc, char **argv) {
    long ok = 0, missing = 0, failed = 0;
    char line[8192];
    if (argc < 3) { fprintf(stderr, "usage: see source\n"); return 2; }
    const char *mode = argv[1];
    if (!strcmp(mode, "stat")) {
        FILE *f = open_list(argv[2]);
        struct stat st;
        while (fgets(line, sizeof line, f)) {
            chomp(line);
            if (lstat(line, &st) == 0) ok++;
            else if (errno == ENOENT) missing++;
            else { failed++; if (failed < 5) perror(line); }
        }
    } else if (!strcmp(mode, "read")) {
        FILE *f = open_list(argv[2]);
        while (fgets(line, sizeof line, f)) {
            chomp(line);
            int fd = open(line, O_RDONLY | O_NOFOLLOW);
            if (fd < 0) { failed++; if (failed < 5) perror(line); continue; }
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0) {}
            if (r < 0) { failed++; perror(line); } else ok++;
            close(fd);
        }
    } else if (!strcmp(mode, "create") || !strcmp(mode, "mkfiles")) {
        if (argc < 5) return 2;
        const char *dir = argv[2];
        long n = atol(argv[3]), size = atol(argv[4]);
        if (size > (long)sizeof buf) size = sizeof buf;
        memset(buf, 'x', size);
        if (mkdir(dir, 0755) && errno != EEXIST) { perror(dir); return 1; }
        for (long i = 0; i < n; i++) {
            snprintf(line, sizeof line, "%s/f%06ld", dir, i);
            int fd = open(line, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) { failed++; if (failed < 5) perror(line); continue; }
            if (write(fd, buf, size) != size) { failed++; perror(line); }
            close(fd);
        }
        if (!strcmp(mode, "mkfiles")) ok = n - failed;
        else for (long i = 0; i < n; i++) {
            snprintf(line, sizeof line, "%s/f%06ld", dir, i);
            if (unlink(line)) { failed++; if (failed < 5) perror(line); } else ok++;
        }
    } else if (!strcmp(mode, "rename")) {
        FILE *f = open_list(argv[2]);
        char to[8300];
        while (fgets(line, sizeof line, f)) {
            chomp(line);
            snprintf(to, sizeof to, "%s.renamed", line);
            if (rename(line, to)) { failed++; if (failed < 5) perror(line); } else ok++;
        }
    } else if (!strcmp(mode, "append")) {
        if (append_one(argv[2])) { perror(argv[2]); return 1; }
        ok = 1;
    } else if (!strcmp(mode, "appendlist")) {
        FILE *f = open_list(argv[2]);
        while (fgets(line, sizeof line, f)) {
            chomp(line);
            if (append_one(line)) { failed++; if (failed < 5) perror(line); } else ok++;
        }
    } else if (!strcmp(mode, "xattr")) {
        /* argv[3] lgetxattr calls of an attribute argv[2] does not have:
         * nothing for the daemon to do but answer, so the time per call is
         * a request's round trip through the kernel. */
        if (argc < 4) return 2;
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            if (lgetxattr(argv[2], "user.bench.absent", buf, sizeof buf) < 0 && errno == ENODATA) ok++;
            else { failed++; if (failed < 5) perror(argv[2]); }
        }
    } else if (!strcmp(mode, "walk")) {
        int dfd = open(argv[2], O_RDONLY | O_DIRECTORY);
        if (dfd < 0) { perror(argv[2]); return 1; }
        walk(dfd, &ok, &failed);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("ok=%ld missing=%ld failed=%ld\n", ok, missing, failed);
    return failed ? 1 : 0;
}
