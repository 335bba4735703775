# respguard: multi-stage build, small non-root runtime image.
#   docker build -t respguard .
#   docker run -p 6380:6380 -p 9121:9121 -e RESPGUARD_UPSTREAM=redis://redis:6379 respguard
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY data ./data
COPY config.example.toml ./
# The test targets are not built; an empty tests/ keeps Cargo.toml's [[test]] valid.
RUN mkdir -p tests/it && echo 'fn main() {}' > tests/it/main.rs \
 && cargo build --release --locked --bin respguard

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home respguard
COPY --from=build /src/target/release/respguard /usr/local/bin/respguard
COPY config.example.toml /etc/respguard/respguard.toml
ENV RESPGUARD_CONFIG=/etc/respguard/respguard.toml \
    RESPGUARD_LISTEN=0.0.0.0:6380 \
    RESPGUARD_ADMIN_LISTEN=0.0.0.0:9121
USER respguard
EXPOSE 6380 9121
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["respguard", "health-probe", "127.0.0.1:9121", "--path", "/healthz"]
ENTRYPOINT ["respguard"]
