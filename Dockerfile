# Silt agent image: `docker build -t silt .` then `docker run -p 9092:9092 -p 9644:9644 silt`.
# Build stage: the release binary (protoc is needed by the etcd client's build).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p silt && cp target/release/silt /usr/local/bin/silt

# Runtime stage: a small Debian with CA certificates (for S3 over TLS), running as non-root.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data silt \
 && mkdir -p /data /etc/silt && chown silt /data
COPY --from=build /usr/local/bin/silt /usr/local/bin/silt
COPY config/ /etc/silt/
USER 10001
WORKDIR /data
# Listen on every interface inside the container; set SILT_ADVERTISED_HOST to the address
# clients reach this agent at.
ENV SILT_LISTEN=0.0.0.0:9092 \
    SILT_ADMIN_LISTEN=0.0.0.0:9644 \
    SILT_DATA_DIR=/data
EXPOSE 9092 9644
# SIGTERM is the graceful stop: flush, commit, hand partitions over, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["silt"]
CMD ["agent"]
