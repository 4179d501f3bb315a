# The loggregator image: the release binary on a slim Debian base, run as a non-root user.
#   docker build -t loggregator-rs/loggregator:0.1.0 .
# deploy/kubernetes uses this name. The binary runs any component: `docker run ... doppler`,
# or the whole pipeline with no arguments (listening on loopback inside the container).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin loggregator \
 && cp target/release/loggregator /loggregator

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin loggregator
COPY --from=build /loggregator /usr/local/bin/loggregator
USER 10001:10001
# agent 3458/3457 (v2 gRPC / v1 UDP), doppler 8082, log-cache 8080/8083, RLP 8090, gateway 8088,
# traffic controller 8081, metrics and /health 14824.
EXPOSE 3458 3457/udp 8082 8080 8083 8090 8088 8081 14824
ENTRYPOINT ["/usr/local/bin/loggregator"]
