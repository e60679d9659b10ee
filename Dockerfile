# syntax=docker/dockerfile:1
# The vaultsync operator image: a static-ish Rust binary on distroless (glibc + CA
# certificates, no shell, no package manager), running as the unprivileged user 65532.
#
#   docker build -t vaultsync:dev .
#
# The chart and config/default run it with `run --config /etc/vaultsync/config.yaml`
# and a read-only root filesystem.

FROM rust:1-bookworm AS build
WORKDIR /src
# The manifest, the lock file and the targets it declares (tests/ holds a declared test
# target that cargo checks for even when building only the binary).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
# Cache mounts keep the registry and the build directory across builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vaultsync \
    && install -D -m 0755 target/release/vaultsync /out/vaultsync

# Debian 12, like the builder, so the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="vaultsync" \
      org.opencontainers.image.description="Kubernetes operator that syncs short-lived Secrets from Vault/OpenBao" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/vaultsync /vaultsync
USER 65532:65532
# /metrics, /healthz and /readyz (metricsAddress).
EXPOSE 8080
ENTRYPOINT ["/vaultsync"]
CMD ["run", "--config", "/etc/vaultsync/config.yaml"]
