/* latencyfs: a FUSE passthrough that behaves like a network volume's metadata path.
 *
 * Every metadata operation (lookup, getattr, access, readlink, open, create, mkdir,
 * symlink, link, rename, unlink, readdir, ...) sleeps a fixed latency before it runs, as
 * a round trip to a metadata server would; file data moves at local speed. The kernel may
 * cache entries and attributes for a short time (--cache=S), as NFS and MooseFS clients do.
 * Each operation kind is counted in a file of 64-bit counters (--counters=FILE), so a
 * benchmark can say how many round trips a step made, not only how long it took.
 *
 *   latencyfs MOUNTPOINT -f --backing=DIR --latency-us=500 --cache=1 --counters=FILE
 *
 * Built by bench/volume.py with `cc -O2 latencyfs.c $(pkg-config --cflags --libs fuse3)`.
 * Written for gpulock's benchmark (MIT, like gpulock); the ops follow libfuse's high-level
 * API (fuse3 3.14).
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

enum op { OP_GETATTR, OP_ACCESS, OP_READLINK, OP_OPENDIR, OP_READDIR, OP_OPEN, OP_CREATE,
          OP_MKDIR, OP_SYMLINK, OP_LINK, OP_RENAME, OP_UNLINK, OP_RMDIR, OP_SETATTR,
          OP_STATFS, OP_FSYNC, OP_COUNT };

static struct options {
    const char *backing;
    const char *counters;
    int latency_us;
    double cache;
} options = { NULL, NULL, 0, 1.0 };

static const struct fuse_opt option_spec[] = {
    { "--backing=%s", offsetof(struct options, backing), 0 },
    { "--counters=%s", offsetof(struct options, counters), 0 },
    { "--latency-us=%d", offsetof(struct options, latency_us), 0 },
    { "--cache=%lf", offsetof(struct options, cache), 0 },
    FUSE_OPT_END
};

static int root = -1;               /* the backing folder: every path is relative to it */
static uint64_t *counts;            /* OP_COUNT counters, shared with the benchmark */
static uint64_t fallback[OP_COUNT];

/* One round trip: count it, then wait as a network would. */
static void trip(enum op op)
{
    __atomic_fetch_add(&counts[op], 1, __ATOMIC_RELAXED);
    if (options.latency_us > 0)
        usleep((useconds_t) options.latency_us);
}

/* "/a/b" -> "a/b", "/" -> "." (paths relative to the backing folder's descriptor) */
static const char *rel(const char *path)
{
    return path[1] ? path + 1 : ".";
}

static void *lfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void) conn;
    cfg->use_ino = 1;
    cfg->entry_timeout = options.cache;
    cfg->attr_timeout = options.cache;
    cfg->negative_timeout = 0;
    return NULL;
}

static int lfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    trip(OP_GETATTR);
    int res = fi ? fstat((int) fi->fh, st)
                 : fstatat(root, rel(path), st, AT_SYMLINK_NOFOLLOW);
    return res == -1 ? -errno : 0;
}

static int lfs_access(const char *path, int mask)
{
    trip(OP_ACCESS);
    return faccessat(root, rel(path), mask, 0) == -1 ? -errno : 0;
}

static int lfs_readlink(const char *path, char *buf, size_t size)
{
    trip(OP_READLINK);
    ssize_t res = readlinkat(root, rel(path), buf, size - 1);
    if (res == -1)
        return -errno;
    buf[res] = '\0';
    return 0;
}

static int lfs_opendir(const char *path, struct fuse_file_info *fi)
{
    trip(OP_OPENDIR);
    int fd = openat(root, rel(path), O_RDONLY | O_DIRECTORY);
    if (fd == -1)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        close(fd);
        return -errno;
    }
    fi->fh = (uint64_t) (uintptr_t) dir;
    return 0;
}

static int lfs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void) path;
    (void) flags;
    trip(OP_READDIR);
    DIR *dir = (DIR *) (uintptr_t) fi->fh;
    if (offset == 0)
        rewinddir(dir);
    else
        seekdir(dir, offset);
    struct dirent *item;
    while ((item = readdir(dir)) != NULL) {
        struct stat st = { .st_ino = item->d_ino, .st_mode = (mode_t) item->d_type << 12 };
        if (fill(buf, item->d_name, &st, telldir(dir), 0))
            break;
    }
    return 0;
}

static int lfs_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void) path;
    closedir((DIR *) (uintptr_t) fi->fh);
    return 0;
}

static int lfs_open(const char *path, struct fuse_file_info *fi)
{
    trip(OP_OPEN);
    int fd = openat(root, rel(path), fi->flags & ~O_NOFOLLOW);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t) fd;
    return 0;
}

static int lfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    trip(OP_CREATE);
    int fd = openat(root, rel(path), fi->flags, mode);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t) fd;
    return 0;
}

static int lfs_read(const char *path, char *buf, size_t size, off_t offset,
                    struct fuse_file_info *fi)
{
    (void) path;
    ssize_t res = pread((int) fi->fh, buf, size, offset);
    return res == -1 ? -errno : (int) res;
}

static int lfs_write(const char *path, const char *buf, size_t size, off_t offset,
                     struct fuse_file_info *fi)
{
    (void) path;
    ssize_t res = pwrite((int) fi->fh, buf, size, offset);
    return res == -1 ? -errno : (int) res;
}

static int lfs_release(const char *path, struct fuse_file_info *fi)
{
    (void) path;
    close((int) fi->fh);
    return 0;
}

static int lfs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void) path;
    trip(OP_FSYNC);
    int res = datasync ? fdatasync((int) fi->fh) : fsync((int) fi->fh);
    return res == -1 ? -errno : 0;
}

static int lfs_mkdir(const char *path, mode_t mode)
{
    trip(OP_MKDIR);
    return mkdirat(root, rel(path), mode) == -1 ? -errno : 0;
}

static int lfs_symlink(const char *target, const char *path)
{
    trip(OP_SYMLINK);
    return symlinkat(target, root, rel(path)) == -1 ? -errno : 0;
}

static int lfs_link(const char *from, const char *to)
{
    trip(OP_LINK);
    return linkat(root, rel(from), root, rel(to), 0) == -1 ? -errno : 0;
}

static int lfs_rename(const char *from, const char *to, unsigned int flags)
{
    trip(OP_RENAME);
    long res = syscall(SYS_renameat2, root, rel(from), root, rel(to), flags);
    return res == -1 ? -errno : 0;
}

static int lfs_unlink(const char *path)
{
    trip(OP_UNLINK);
    return unlinkat(root, rel(path), 0) == -1 ? -errno : 0;
}

static int lfs_rmdir(const char *path)
{
    trip(OP_RMDIR);
    return unlinkat(root, rel(path), AT_REMOVEDIR) == -1 ? -errno : 0;
}

static int lfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    trip(OP_SETATTR);
    int res = fi ? fchmod((int) fi->fh, mode) : fchmodat(root, rel(path), mode, 0);
    return res == -1 ? -errno : 0;
}

static int lfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    trip(OP_SETATTR);
    int res = fi ? fchown((int) fi->fh, uid, gid)
                 : fchownat(root, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
    return res == -1 ? -errno : 0;
}

static int lfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    trip(OP_SETATTR);
    int res;
    if (fi) {
        res = ftruncate((int) fi->fh, size);
    } else {
        int fd = openat(root, rel(path), O_WRONLY);
        if (fd == -1)
            return -errno;
        res = ftruncate(fd, size);
        close(fd);
    }
    return res == -1 ? -errno : 0;
}

static int lfs_utimens(const char *path, const struct timespec times[2],
                       struct fuse_file_info *fi)
{
    trip(OP_SETATTR);
    int res = fi ? futimens((int) fi->fh, times)
                 : utimensat(root, rel(path), times, AT_SYMLINK_NOFOLLOW);
    return res == -1 ? -errno : 0;
}

static int lfs_statfs(const char *path, struct statvfs *st)
{
    (void) path;
    trip(OP_STATFS);
    return fstatvfs(root, st) == -1 ? -errno : 0;
}

static const struct fuse_operations operations = {
    .init = lfs_init,
    .getattr = lfs_getattr,
    .access = lfs_access,
    .readlink = lfs_readlink,
    .opendir = lfs_opendir,
    .readdir = lfs_readdir,
    .releasedir = lfs_releasedir,
    .open = lfs_open,
    .create = lfs_create,
    .read = lfs_read,
    .write = lfs_write,
    .release = lfs_release,
    .fsync = lfs_fsync,
    .mkdir = lfs_mkdir,
    .symlink = lfs_symlink,
    .link = lfs_link,
    .rename = lfs_rename,
    .unlink = lfs_unlink,
    .rmdir = lfs_rmdir,
    .chmod = lfs_chmod,
    .chown = lfs_chown,
    .truncate = lfs_truncate,
    .utimens = lfs_utimens,
    .statfs = lfs_statfs,
};

/* The counters live in a file the benchmark reads between steps. */
static uint64_t *map_counters(const char *file)
{
    if (file == NULL)
        return fallback;
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd == -1 || ftruncate(fd, sizeof(uint64_t) * OP_COUNT) == -1) {
        perror(file);
        exit(2);
    }
    void *map = mmap(NULL, sizeof(uint64_t) * OP_COUNT, PROT_READ | PROT_WRITE, MAP_SHARED,
                     fd, 0);
    if (map == MAP_FAILED) {
        perror(file);
        exit(2);
    }
    close(fd);
    return map;
}

int main(int argc, char *argv[])
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    if (fuse_opt_parse(&args, &options, option_spec, NULL) == -1)
        return 2;
    if (options.backing == NULL) {
        fprintf(stderr, "latencyfs: --backing=DIR is required\n");
        return 2;
    }
    root = open(options.backing, O_RDONLY | O_DIRECTORY);
    if (root == -1) {
        perror(options.backing);
        return 2;
    }
    counts = map_counters(options.counters);
    umask(0);
    int res = fuse_main(args.argc, args.argv, &operations, NULL);
    fuse_opt_free_args(&args);
    return res;
}
