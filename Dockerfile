# syntax=docker/dockerfile:1
# warren's image: `warren-worker` (the queue worker, the entrypoint), `warren` (the producer CLI)
# and the example guest modules (in /opt/warren/modules).
#
#   docker build -t warren .
#   docker run --rm -e AMQP_URL=amqp://guest:guest@broker:5672/%2f warren          # a worker
#   docker run --rm --entrypoint warren warren --help                            # the producer
#
# docker-compose.yml runs it with RabbitMQ, Prometheus and Grafana; see docs/deployment.md.

ARG RUST_VERSION=1.95

# ---- build: guest modules (wasm32-wasip1/-wasip2, the Python and JavaScript runners) and both
# binaries, in release ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
RUN rustup target add wasm32-wasip1 wasm32-wasip2 \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3-venv nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and both target directories between builds; the results are
# copied out of them in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/src/modules/target \
    bash modules/build.sh --languages=yes \
 && cargo build --release --locked -p warren-worker -p warren \
 && mkdir -p /out/bin /out/modules \
 && cp target/release/warren-worker target/release/warren /out/bin/ \
 && cp modules/dist/*.wasm /out/modules/

# ---- runtime: a small Debian with the two binaries, running as an unprivileged user ----------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: amqps:// brokers are verified against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 warren \
 && useradd --system --uid 10001 --gid warren --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin warren \
 && mkdir -p /modules /var/cache/warren \
 && chown warren:warren /modules /var/cache/warren \
 && chmod 0700 /var/cache/warren
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/modules/ /opt/warren/modules/

# The AOT cache holds compiled code the worker trusts: only the worker may write it (mode 0700,
# owned by the warren user; the worker refuses to start otherwise). A volume keeps it across
# restarts, so a restart compiles nothing.
# /modules is an empty mount point for a modules volume (docker-compose.yml); by default the
# worker serves the modules baked into the image.
ENV WARREN_MODULES=/opt/warren/modules \
    WARREN_CACHE=/var/cache/warren \
    WARREN_METRICS_ADDR=0.0.0.0:9464 \
    WARREN_LOG=info
VOLUME ["/var/cache/warren"]
EXPOSE 9464
USER warren:warren
# SIGTERM drains in-flight tasks (within --drain-timeout, 30 s) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["warren-worker"]
CMD ["run"]
