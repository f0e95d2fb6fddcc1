# syntax=docker/dockerfile:1
#
# headcount in a container: `headcount serve` as the entrypoint, run as an unprivileged user.
#
#   docker build -t headcount .
#   docker run --rm headcount --help                      # serve's flags
#   docker run -d --name chat-headcount --network container:chat headcount   # beside a container
#
# Beside an app container (sharing its network namespace, as above, or in a Kubernetes pod:
# deploy/kubernetes/) serve keeps its default loopback address and needs no password. Reached
# from other containers it must listen on 0.0.0.0 with --requirepass, and the health check
# needs the password too: --health-cmd 'headcount ping --password "$HEADCOUNT_PASSWORD"'
# (the runtime image keeps /bin/sh for that) or `headcount ping --config FILE`.
# A cluster off loopback needs its key: mount it and give --key-file (deploy/kubernetes/README.md).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling; the image does not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p headcount-server --bin headcount \
    && install -D -m 0755 target/release/headcount /out/headcount

# Debian slim rather than distroless: the same glibc as the build stage, and a /bin/sh for
# shell-form health checks (docker run --health-cmd). The binary needs only libc and libgcc_s,
# so gcr.io/distroless/cc-debian12:nonroot works too (exec-form checks only).
FROM debian:bookworm-slim
RUN groupadd --system --gid 65532 headcount \
    && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/headcount \
        --shell /usr/sbin/nologin headcount
COPY --from=build /out/headcount /usr/local/bin/headcount
USER 65532:65532
WORKDIR /home/headcount
# RESP (clients), the cluster's datagrams, Prometheus metrics (with --metrics 0.0.0.0:9379).
EXPOSE 7379/tcp 7380/udp 9379/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["headcount", "ping", "--quiet"]
# SIGTERM (docker stop): close the connections, say goodbye to the cluster, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["headcount", "serve"]
