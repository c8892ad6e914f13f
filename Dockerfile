# The native parts of authstamp as small images running as a non-root user:
#   docker build --target token-service -t authstamp/token-service .
#   docker build --target standin       -t authstamp/standin .
# docker-compose.yml builds both. The filter is not built here: Envoy (the
# official image) mounts target/wasm32-wasip1/release/authstamp_filter.wasm,
# which `make wasm` builds.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# 1. Build: the whole workspace source (see .dockerignore), two binaries.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --profile service \
        -p authstamp-token-service -p authstamp-standin-provider \
 && install -m 0755 target/service/authstamp target/service/authstamp-standin /usr/local/bin/

# 2. A small runtime: Debian slim, CA certificates, user authstamp (10001).
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 authstamp \
 && useradd --system --uid 10001 --gid authstamp --home-dir /data --shell /usr/sbin/nologin authstamp \
 && mkdir -p /data /secrets \
 && chown authstamp:authstamp /data /secrets \
 && chmod 0700 /data /secrets

# The token service: SQLite and (with --local) its key files in the /data volume.
FROM runtime AS token-service
COPY --from=build /usr/local/bin/authstamp /usr/local/bin/authstamp
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENV AUTHSTAMP_DATA_DIR=/data \
    AUTHSTAMP_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["authstamp"]
CMD ["serve"]

# The stand-in OAuth provider, for trials and tests only.
FROM runtime AS standin
COPY --from=build /usr/local/bin/authstamp-standin /usr/local/bin/authstamp-standin
USER 10001:10001
ENV AUTHSTAMP_STANDIN_LISTEN=0.0.0.0:9100
EXPOSE 9100
ENTRYPOINT ["authstamp-standin"]
