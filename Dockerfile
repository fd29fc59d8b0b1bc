# syntax=docker/dockerfile:1
#
# nomad-relay container image: docker build -t ghcr.io/nomad-relay/nomad-relay:0.1.0 .
# (docker compose up --build builds it too). The runtime image runs as uid 10001 and keeps its
# journal, cursors and lock file in /var/lib/nomad-relay: mount a persistent volume there.

# ---- builder ---------------------------------------------------------------------------------
# The workspace needs Rust 1.89+ (edition 2024). The full (non-slim) rust image already has
# what rdkafka-sys needs to build its bundled librdkafka with mklove's ./configure and make
# (a C toolchain, make, bash, zlib1g-dev, and libssl-dev for Kafka TLS and SASL/SCRAM; zstd is
# built from source); no cmake. The runtime image's libssl3 comes with ca-certificates.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is
# copied out of the cached target directory so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nomad-relay \
    && install -D -m 0755 target/release/nomad-relay /out/nomad-relay

# ---- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system roots for https:// Nomad addresses and TLS to the brokers.
# curl: only for the container health check (GET /readyz), used by docker-compose.yml.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 nomad-relay \
    && useradd --system --uid 10001 --gid nomad-relay --home-dir /var/lib/nomad-relay \
        --no-create-home --shell /usr/sbin/nologin nomad-relay \
    && install -d -o nomad-relay -g nomad-relay -m 0750 /var/lib/nomad-relay \
    && install -d -m 0755 /etc/nomad-relay
COPY --from=builder /out/nomad-relay /usr/local/bin/nomad-relay
USER nomad-relay:nomad-relay
# A relative data_dir (the built-in default is ./data) lands in the volume, writable by the user.
WORKDIR /var/lib/nomad-relay
# The data directory: journal/, cursors/ and the lock file that keeps a second relay out.
VOLUME ["/var/lib/nomad-relay"]
# /metrics, /healthz and /readyz, when the configuration has [http] listen = "0.0.0.0:8686".
EXPOSE 8686
ENTRYPOINT ["/usr/local/bin/nomad-relay"]
CMD ["run", "--config", "/etc/nomad-relay/relay.toml"]
