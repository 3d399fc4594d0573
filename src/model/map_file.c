// SPDX-License-Identifier: MIT
// map_file.c -- a weight file mapped read-only, for the safetensors and the
// GGUF readers: open, check it is a regular file of at least the header's
// size, mmap the whole of it, close the descriptor (the mapping stays).
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/internal.h"

enum lp_status lp_map_file(const char *path, size_t min_bytes, const char *header, void **map,
                           size_t *n_bytes, struct lp_error *err) {
    *map = NULL;
    *n_bytes = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lp_error_set(err, LP_ERR_IO, "%s: open: %s", path, strerror(errno));
    struct stat sb;
    enum lp_status st = LP_OK;
    if (fstat(fd, &sb) != 0) {
        st = lp_error_set(err, LP_ERR_IO, "%s: stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        st = lp_error_set(err, LP_ERR_IO, "%s: not a regular file", path);
    } else if ((uint64_t)sb.st_size < min_bytes) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: file is %lld bytes, shorter than %s", path,
                          (long long)sb.st_size, header);
    } else {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            st = lp_error_set(err, LP_ERR_IO, "%s: mmap: %s", path, strerror(errno));
        } else {
            *map = p;
            *n_bytes = (size_t)sb.st_size;
        }
    }
    close(fd);
    return st;
}
