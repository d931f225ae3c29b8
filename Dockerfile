# syntax=docker/dockerfile:1
# Onramp's container image (docs/packages.md): built from this repository
# in a Rust image, run in a slim Debian as the non-root user onramp.
#   docker build -t onramp .
#   docker run -p 443:443 -p 8883:8883 -p 5671:5671 -v onramp-data:/var/lib/onramp onramp

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p onramp \
    && install -m 0755 target/release/onramp /usr/local/bin/onramp

FROM debian:bookworm-slim
# CA roots for calls to hubs and webhooks with public certificates.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --uid 10001 --home-dir /var/lib/onramp \
        --no-create-home --shell /usr/sbin/nologin onramp \
    && install -d -m 0700 -o onramp -g onramp /var/lib/onramp \
    && install -d -m 0755 /etc/onramp
COPY --from=build /usr/local/bin/onramp /usr/bin/onramp
COPY crates/onramp/debian/onramp.toml /etc/onramp/onramp.toml
# The metrics listener on every interface of the container: publish its
# port only to the scraper's network.
ENV ONRAMP_CONFIG=/etc/onramp/onramp.toml \
    ONRAMP_METRICS_LISTEN=0.0.0.0:9464
USER onramp
VOLUME ["/var/lib/onramp"]
EXPOSE 443 8883 5671 9464
ENTRYPOINT ["/usr/bin/onramp"]
CMD ["serve"]
