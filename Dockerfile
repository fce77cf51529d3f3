# syntax=docker/dockerfile:1
#
# callgate's container image: a build stage compiles the release binary from the locked
# dependencies; the runtime stage is distroless (glibc, CA certificates, no shell, no package
# manager, no curl) and runs as the unprivileged user 65532.
#
#   docker build --build-arg CALLGATE_GIT_SHA="$(git rev-parse --short=12 HEAD)" -t callgate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 50051:50051 -e CALLGATE_WEBHOOK_TOKENS=demo-secret callgate:0.1.0
#
# Ports (EXPOSE below):
#   8080   HTTP: webhooks (/webhooks/doubletick, /webhooks/whatsapp), /healthz, /readyz, /metrics
#   50051  gRPC: callgate.v1.ConsentAuthority, grpc.health.v1, reflection
#
# Every setting is an environment variable (README.md, "Configuration"); all are optional:
#   CALLGATE_HTTP_ADDR               webhook, health and metrics port        [0.0.0.0:8080]
#   CALLGATE_GRPC_ADDR               gRPC port                               [0.0.0.0:50051]
#   CALLGATE_REDIS_URL               redis://[:password@]host:port[/db]      [unset: in-memory store]
#   CALLGATE_REDIS_CLUSTER_NODES     redis://h1:p,redis://h2:p (a cluster)   [unset; not with _URL]
#   CALLGATE_REDIS_REPLICA_ACKS      replicas that must hold a write before 200 [0]
#   CALLGATE_REDIS_PREFIX            prefix of every Redis key               [callgate]
#   CALLGATE_REDIS_LAYOUT            Redis key layout: auto, v1, v2 (README) [auto: the store's; v2 if empty]
#   CALLGATE_REDIS_HOT_BUCKETS       layout v2: hot-record buckets a shard   [1024]
#   CALLGATE_REDIS_TIMEOUT_MS        a slower Redis call fails closed        [250]
#   CALLGATE_REDIS_HEALTH_INTERVAL_MS  PING period of the Redis connection   [1000]
#   CALLGATE_MAX_CLOCK_SKEW_SECS     event times further ahead are ordered at arrival [120]
#   CALLGATE_TEMPORARY_GRANT_SECS    "Allow for 7 Days" without an expiry    [604800]
#   CALLGATE_EVENT_RETENTION_SECS    how far back StreamGrants can resume    [604800]
#   CALLGATE_CHECKPOINT_SECS         checkpoint period of an idle stream     [5]
#   CALLGATE_EXPIRY_SWEEP_MS         how often lapsed grants become EXPIRED  [250]
#   CALLGATE_SHUTDOWN_GRACE_SECS     in-flight work's time after SIGTERM     [10]
#   CALLGATE_LOG_FORMAT              text or json                            [json in this image]
#   CALLGATE_WEBHOOK_TOKENS          comma-separated DoubleTick secrets      [unset: route answers 503]
#   CALLGATE_WEBHOOK_AUTH_HEADER     extra header that may carry the secret  [unset]
#   CALLGATE_WHATSAPP_APP_SECRET     Meta app secret (X-Hub-Signature-256)   [unset: route answers 503]
#   CALLGATE_WHATSAPP_VERIFY_TOKEN   Meta's GET handshake token              [unset]
#   CALLGATE_API_CLIENTS_FILE        TOML file of gRPC API clients (keys by SHA-256, scopes)
#                                    [unset: every gRPC call refused]; mount it, e.g. from a secret
#   CALLGATE_API_CLIENTS_RELOAD_SECS how often that file is re-read          [10]
#   CALLGATE_TLS_CERT                PEM certificate chain for both ports    [unset: plain TCP]
#   CALLGATE_TLS_KEY                 PEM private key of that certificate     [unset]
#   CALLGATE_TLS_CLIENT_CA           CA(s) for mutual TLS on the gRPC port   [unset]
#   CALLGATE_TLS_RELOAD_SECS         how often the TLS files are re-read     [10]
#   CALLGATE_HTTP_HEADER_TIMEOUT_MS  request headers must arrive within      [5000]
#   CALLGATE_HTTP_BODY_TIMEOUT_MS    whole body must arrive within (else 408)[10000]
#   CALLGATE_HTTP_MAX_CONNECTIONS    HTTP connections served at once         [4096]
#   CALLGATE_GRPC_MAX_CONNECTIONS    gRPC connections served at once         [1024]
#   CALLGATE_GRPC_MAX_STREAMS_PER_CONNECTION  concurrent calls per connection [128]
#   CALLGATE_MAX_SUBSCRIPTIONS       StreamGrants streams open at once       [1024]
#   CALLGATE_STREAM_STALL_TIMEOUT_MS a stream client taking nothing this long is ended [30000]
#   CALLGATE_UNATTRIBUTED_REPLIES    a reply matching no registered request: all_teams|no_team [all_teams]
#   CALLGATE_REQUEST_LIMITS          consent request budget per customer     [1/24h,2/7d]
#   CALLGATE_REQUEST_RETENTION_SECS  how long a registration is kept         [2592000]
#   CALLGATE_CHECK_CACHE             replica-local check cache: on|off       [on]
#   CALLGATE_CHECK_CACHE_MAX_STALENESS_MS  B: a cached answer is at most this old [100]
#   CALLGATE_CHECK_CACHE_TTL_SECS    longest life of a cache entry           [1800]
#   CALLGATE_CHECK_CACHE_ENTRIES     pairs the check cache holds             [200000]
#   CALLGATE_OUTBOUND_ALLOW_NETWORKS private networks webhooks may reach     [unset: none]
#   CALLGATE_OUTBOUND_TIMEOUT_MS     one outbound delivery attempt           [10000]
#   CALLGATE_OUTBOUND_LEASE_MS       delivery lease (takeover after a death) [30000]
#   CALLGATE_OUTBOUND_SCAN_MS        how often subscriptions are looked for  [5000]
#   CALLGATE_OUTBOUND_BACKOFF_MIN_MS first retry delay of a failed delivery  [5000]
#   CALLGATE_OUTBOUND_BACKOFF_MAX_SECS  longest retry delay                  [3600]
#   CALLGATE_OUTBOUND_RETRY_FOR_SECS an event undelivered this long: failing [259200]
#   CALLGATE_OUTBOUND_SECRET_OVERLAP_SECS  old secret signs this long after rotation [86400]
#   CALLGATE_OTLP_ENDPOINT           OTLP/gRPC collector for spans           [unset: no export;
#                                    needs an image built with --build-arg CALLGATE_FEATURES=otlp]
#   RUST_LOG                         log filter (tracing env-filter syntax)  [info]
# Secrets (tokens, app secret, a Redis URL with a password) belong in your orchestrator's
# secret store, not in this file or in `docker run -e` on a shared host.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The whole source tree (see .dockerignore: no target/, no .git/); the proto compiler is built
# in (protox), so the build stage needs nothing beyond the Rust image.
COPY . .
# The commit for `callgate --version` (.git is not in the build context).
ARG CALLGATE_GIT_SHA=""
ENV CALLGATE_GIT_SHA=${CALLGATE_GIT_SHA}
# Optional cargo features, comma-separated: `otlp` adds OpenTelemetry span export.
ARG CALLGATE_FEATURES=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin callgate --features "${CALLGATE_FEATURES}" \
    && install -D -m 0755 target/release/callgate /out/callgate

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/callgate /usr/local/bin/callgate
# distroless's "nonroot" user; numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENV CALLGATE_HTTP_ADDR=0.0.0.0:8080 \
    CALLGATE_GRPC_ADDR=0.0.0.0:50051 \
    CALLGATE_LOG_FORMAT=json
EXPOSE 8080 50051
# No curl in the image: the binary probes its own /healthz (on CALLGATE_HTTP_ADDR, via loopback).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/callgate", "healthcheck"]
# callgate drains on SIGTERM within CALLGATE_SHUTDOWN_GRACE_SECS; give `docker stop` more
# than that (`--time 15`, or compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/callgate"]
CMD ["serve"]
