# syntax=docker/dockerfile:1.7
# The operator image: a static (musl) binary on distroless, running as UID 65532.
#   docker build -t ghcr.io/dag-operator/dag-operator:0.1.0 .
# The chart's image.repository/image.tag point at it; docs/INSTALL.md has the details.

ARG RUST_VERSION=1.95
ARG TARGET=x86_64-unknown-linux-musl

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGET
# musl-gcc compiles ring's C and assembly and jemalloc (the global allocator) for the musl target
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${TARGET}"
WORKDIR /src
# the whole workspace: cargo reads every member's manifest (e2e/) and the benches it declares
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "${TARGET}" -p dag-operator --bin dag-operator \
 && cp "target/${TARGET}/release/dag-operator" /dag-operator
# fail the build if the binary is not static
RUN if ldd /dag-operator 2>&1 | grep -q '=>'; then ldd /dag-operator; exit 1; fi \
 && /dag-operator --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /dag-operator /usr/local/bin/dag-operator
# nonroot of distroless; the chart also sets runAsNonRoot, runAsUser 65532 and a read-only root
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dag-operator"]
CMD ["run"]
