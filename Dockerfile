# Tally's container images: one Rust build of the five binaries, then one small runtime
# image per binary. Build each with its target (BuildKit, the default builder of current
# Docker releases, is needed for the cache mounts):
#
#   docker build --target operator  -t tally/operator:0.1.0  .
#   docker build --target collector -t tally/collector:0.1.0 .
#   docker build --target processor -t tally/processor:0.1.0 .
#   docker build --target query     -t tally/query:0.1.0     .
#   docker build --target import    -t tally/import:0.1.0    .
#
# The images run as the unprivileged user 65532, with the binary as entrypoint (it is
# PID 1 and handles SIGTERM itself). The Helm chart (charts/tally) uses these names.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

# --- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole workspace: cargo needs every member's manifest (see .dockerignore).
COPY . .
# The registry and the target dir are cache mounts, so a rebuild only compiles what
# changed; the binaries are copied out of the cache into /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile dist --locked \
      -p tally-operator -p tally-collector -p tally-processor -p tally-query -p tally-import \
 && mkdir -p /out \
 && cp target/dist/tally-operator target/dist/tally-collector \
      target/dist/tally-processor target/dist/tally-query target/dist/tally-import /out/

# --- runtime base -----------------------------------------------------------------------
# Same Debian release as the builder (same glibc). Only the CA bundle is added: rustls
# reads the system roots for TLS to NATS, ClickHouse or an OTLP endpoint.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.vendor="Tally" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
WORKDIR /

# --- one image per binary ---------------------------------------------------------------
FROM runtime AS collector
LABEL org.opencontainers.image.title="tally-collector" \
      org.opencontainers.image.description="Tally's HTTP ingestion service"
COPY --from=builder /out/tally-collector /usr/local/bin/tally-collector
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tally-collector"]

FROM runtime AS processor
LABEL org.opencontainers.image.title="tally-processor" \
      org.opencontainers.image.description="Tally's JetStream to ClickHouse consumer"
COPY --from=builder /out/tally-processor /usr/local/bin/tally-processor
EXPOSE 9091
ENTRYPOINT ["/usr/local/bin/tally-processor"]

FROM runtime AS query
LABEL org.opencontainers.image.title="tally-query" \
      org.opencontainers.image.description="Tally's read side: stats from ClickHouse"
COPY --from=builder /out/tally-query /usr/local/bin/tally-query
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/tally-query"]

FROM runtime AS import
LABEL org.opencontainers.image.title="tally-import" \
      org.opencontainers.image.description="Tally's batch import of logs from S3 (run as a Job)"
COPY --from=builder /out/tally-import /usr/local/bin/tally-import
ENTRYPOINT ["/usr/local/bin/tally-import"]

# The operator last: a plain `docker build .` gives the operator image.
FROM runtime AS operator
LABEL org.opencontainers.image.title="tally-operator" \
      org.opencontainers.image.description="Tally's Kubernetes operator"
COPY --from=builder /out/tally-operator /usr/local/bin/tally-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tally-operator"]
