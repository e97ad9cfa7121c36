# The pod sandbox image of the e2e node (containerd's sandbox_image). Context: a directory
# holding the static `pause` binary (built from pause.c by cluster.sh).
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
