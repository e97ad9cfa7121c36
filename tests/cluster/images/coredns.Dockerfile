# CoreDNS for the e2e cluster's DNS. Context: the directory of the static binary build.sh made.
FROM scratch
COPY coredns /coredns
USER 65532:65532
EXPOSE 53 53/udp
ENTRYPOINT ["/coredns"]
