# The wsPrism gateway as a container image (deploy/README.md "Container").
#
#   docker build -t wsprism .
#   docker run -v "$PWD/conf:/etc/wsprism:ro" -p 8080:8080 -p 127.0.0.1:9090:9090 wsprism
#
# tests/deploy_kit.rs checks this file's invariants (stages, release build,
# non-root user, volumes, the ports of wsprism.yaml).

# Builder: the toolchain of Cargo.toml's `rust-version`. The whole context goes
# in (.dockerignore keeps build outputs and .git out): the gateway embeds the
# WIT, SDK sources and templates at compile time, and the workspace members
# under tools/ must exist for Cargo to read the workspace.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# --locked: build exactly the dependency versions of Cargo.lock.
RUN cargo build --release --locked -p wsprism --bin wsprism

# Runtime: glibc matches the builder (both bookworm); ca-certificates for
# rediss:// and https:// backends.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid/gid (10001) so mounted files can be owned to match.
# /var/cache/wsprism holds the compiled-plugin cache (XDG_CACHE_HOME below);
# it must belong to the gateway's user and be private (0700), or the gateway
# refuses to use it and compiles every plugin at each start.
RUN groupadd --system --gid 10001 wsprism \
    && useradd --system --uid 10001 --gid wsprism --no-create-home \
        --home-dir /var/lib/wsprism --shell /usr/sbin/nologin wsprism \
    && mkdir -p /etc/wsprism /var/lib/wsprism/plugins /var/cache/wsprism \
    && chown wsprism:wsprism /var/lib/wsprism /var/lib/wsprism/plugins /var/cache/wsprism \
    && chmod 0700 /var/cache/wsprism
COPY --from=builder /src/target/release/wsprism /usr/local/bin/wsprism
ENV XDG_CACHE_HOME=/var/cache/wsprism
USER 10001:10001
WORKDIR /var/lib/wsprism
# /etc/wsprism: wsprism.yaml (and key files it names); mount read-only.
# /var/lib/wsprism/plugins: the plugin drop folder; point gateway.plugins.dir
# at it (a relative `dir` is resolved from the config file's directory).
VOLUME ["/etc/wsprism", "/var/lib/wsprism/plugins"]
# gateway.listen (public) and gateway.admin_listen (metrics, server API). The
# admin listener defaults to 127.0.0.1, unreachable from outside the container:
# set admin_listen to 0.0.0.0:9090 to scrape it, and publish it privately.
EXPOSE 8080 9090
# No HEALTHCHECK: the slim image has no HTTP client. Orchestrators should probe
# GET /healthz (liveness) and /readyz (readiness) on the public port.
ENTRYPOINT ["wsprism"]
CMD ["start", "--config", "/etc/wsprism/wsprism.yaml"]
