# syntax=docker/dockerfile:1
# One image, the one `tally` binary; the role is chosen by the command
# (`tally serve --roles api`, `tally migrate`, ...).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, with stub sources: this layer is rebuilt only when a
# manifest or the lock file changes, not on every source edit.
COPY Cargo.toml Cargo.lock ./
COPY common/domain/Cargo.toml common/domain/
COPY common/platform/Cargo.toml common/platform/
COPY common/http/Cargo.toml common/http/
COPY api/Cargo.toml api/
COPY workers/Cargo.toml workers/
COPY broadcaster/Cargo.toml broadcaster/
# tally-bench is a workspace member, so its manifest must be there; the
# image never builds it (only `--bin tally`).
COPY bench/Cargo.toml bench/
RUN for crate in common/domain common/platform common/http api workers broadcaster bench; do mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; done \
 && echo 'fn main() {}' > bench/src/main.rs \
 && mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --bin tally \
 && rm -rf src common/domain/src common/platform/src common/http/src api/src workers/src broadcaster/src bench/src
COPY . .
# The stubs' build artefacts are older than the real sources, but touch
# makes sure cargo rebuilds the project's own crates.
RUN touch src/main.rs src/lib.rs common/domain/src/lib.rs common/platform/src/lib.rs common/http/src/lib.rs api/src/lib.rs workers/src/lib.rs broadcaster/src/lib.rs \
 && cargo build --release --locked --bin tally \
 && strip target/release/tally

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tally
COPY --from=build /src/target/release/tally /usr/local/bin/tally
USER 10001:10001
# Public listeners bind every interface inside a container; the admin
# listener (health, readiness, metrics) too, for the orchestrator and
# Prometheus. Publish only what must be public.
ENV TALLY_HTTP__API_ADDR=0.0.0.0:8080 \
    TALLY_HTTP__BROADCASTER_ADDR=0.0.0.0:8081 \
    TALLY_HTTP__ADMIN_ADDR=0.0.0.0:9100 \
    TALLY_LOG__FORMAT=json
EXPOSE 8080 8081 9100
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 CMD ["tally", "health"]
ENTRYPOINT ["tally"]
CMD ["serve"]
