/*
 * httpclose: the cheapest backend we can write for connection-rate benchmarks.
 *
 *     httpclose PORT [WORKERS]
 *
 * Accepts TCP connections on 0.0.0.0:PORT; for each, reads once (wrk's GET arrives in one
 * segment; a bare connect-and-close probe reads end of file) and, if it got a request, answers a
 * fixed "200 OK, Connection: close", then closes. WORKERS processes (default 2) share the
 * listening socket. Prints "ready" once it listens.
 *
 * Why not the lab's Python backend: at a few thousand connections per second an asyncio server is
 * the bottleneck on a 2-core machine, and it would hide what the load balancer costs. Children die
 * with their parent (PR_SET_PDEATHSIG), so stopping the process group or the parent stops all.
 */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    int one = 1;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 1; }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
    if (listen(s, 4096) < 0) { perror("listen"); return 1; }
    signal(SIGPIPE, SIG_IGN);
    printf("ready\n");
    fflush(stdout);
    for (int i = 1; i < workers; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            break;
        }
    }
    char buf[4096];
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        ssize_t n = read(c, buf, sizeof buf);
        if (n > 0) send(c, RESPONSE, sizeof RESPONSE - 1, MSG_NOSIGNAL);
        close(c);
    }
}
