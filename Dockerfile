# cohort-sync in a container: build with the pinned Rust, run on Debian slim as a
# non-root user, with JSON logs, the metrics and health server on 0.0.0.0:9464 and the
# state in a volume.
#
#   docker build -t cohort-sync .
#   docker run -d --name cohort-sync \
#     -v /srv/cohort-sync/config.toml:/etc/cohort-sync/config.toml:ro \
#     -v cohort-sync-state:/var/lib/cohort-sync \
#     --env-file secrets.env -p 127.0.0.1:9464:9464 cohort-sync

# Builder and runtime share a Debian release, so the binary finds the glibc it was
# linked against.
FROM rust:1.95-trixie AS builder
WORKDIR /src
# The image's 1.95 toolchain builds it; .dockerignore leaves rust-toolchain.toml out so
# the build does not download the pinned patch release and its components again.
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked \
    && install -m 0755 target/release/cohort-sync /usr/local/bin/cohort-sync

FROM debian:trixie-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/cohort-sync \
        --shell /usr/sbin/nologin cohort-sync \
    && mkdir -p /etc/cohort-sync /var/lib/cohort-sync \
    && chown cohort-sync:cohort-sync /var/lib/cohort-sync \
    && chmod 0700 /var/lib/cohort-sync
COPY --from=builder /usr/local/bin/cohort-sync /usr/local/bin/cohort-sync
COPY config/cohort-sync.example.toml /etc/cohort-sync/config.example.toml

# Mount the config at /etc/cohort-sync/config.toml (its directory is watched, so an
# edited or replaced file reloads); pass secrets as COHORT_SYNC__... variables.
ENV COHORT_SYNC_CONFIG=/etc/cohort-sync/config.toml \
    COHORT_SYNC__LOG__FORMAT=json \
    COHORT_SYNC__SERVER__LISTEN=0.0.0.0:9464
VOLUME ["/var/lib/cohort-sync"]
EXPOSE 9464
USER cohort-sync:cohort-sync
WORKDIR /var/lib/cohort-sync
STOPSIGNAL SIGTERM
# `health` asks the daemon's /healthz at server.listen and exits 0 or 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["cohort-sync", "health"]
ENTRYPOINT ["cohort-sync"]
CMD ["run"]
