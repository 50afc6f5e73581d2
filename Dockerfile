# Tailor worker image. Build: docker build -t tailor .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin tailor

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 tailor && mkdir -p /var/lib/tailor && chown tailor /var/lib/tailor
COPY --from=build /src/target/release/tailor /usr/local/bin/tailor
COPY examples/segments.yaml /etc/tailor/segments.yaml
USER tailor
EXPOSE 9464
ENTRYPOINT ["tailor"]
CMD ["run", "--config", "/etc/tailor/tailor.toml"]
