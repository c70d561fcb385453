# srbridge container: docker build -t srbridge .
#   docker run --network host -v /path/to/conf:/etc/srbridge:ro srbridge
# (host networking: SIP and RTP use many UDP ports, and SDP must carry a reachable address.)
FROM rust:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libopus-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin srbridge

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libopus0 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/srbridge --create-home --shell /usr/sbin/nologin srbridge
COPY --from=build /src/target/release/srbridge /usr/local/bin/srbridge
COPY config/srbridge.toml /etc/srbridge/srbridge.toml
USER srbridge
WORKDIR /var/lib/srbridge
EXPOSE 8080/tcp 5086/udp
VOLUME ["/etc/srbridge"]
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM (docker stop) drains calls; give it time: docker stop -t 45
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/srbridge"]
CMD ["/etc/srbridge/srbridge.toml"]
