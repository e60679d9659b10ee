/* The node's smoke test (tests/env/node.sh): a static binary in an image of its own, so a
 * pod runs without a registry. It prints its user and how many bytes it read from each file
 * named on the command line (never their contents), and fails if one cannot be read. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
  printf("vaultsync node smoke: running as uid %d gid %d\n", (int)getuid(), (int)getgid());
  for (int i = 1; i < argc; i++) {
    int fd = open(argv[i], O_RDONLY);
    if (fd < 0) {
      perror(argv[i]);
      return 1;
    }
    char buf[4096];
    long total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
    close(fd);
    if (n < 0) {
      perror(argv[i]);
      return 1;
    }
    printf("read %ld bytes from %s\n", total, argv[i]);
  }
  fflush(stdout);
  return 0;
}
