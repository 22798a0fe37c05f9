# syntax=docker/dockerfile:1
#
# imgn: imd, imrouter and imctl as static binaries in an empty image, run as
# an unprivileged user. Build from the repository root:
#
#   docker build -t imgn --build-arg VERSION=$(scripts/version.sh | sed -n 's/^VERSION=//p') .
#   docker run -p 9090:9090 -v imgn-data:/data imgn             # one node
#   docker run imgn imrouter --zk zk:2181 --listen 0.0.0.0:9080  # the router
#
# The node reads /etc/imgn/imd.toml (deploy/docker/imd.toml: listen on all
# interfaces, data in /data, JSON logs); IM_* variables and flags override
# it. deploy/compose.yaml runs a cluster. See docs/operations.md.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
ARG COMMIT=unknown
ARG DATE=
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/imgn/imgn/internal/version.Version=${VERSION} -X github.com/imgn/imgn/internal/version.Commit=${COMMIT} -X github.com/imgn/imgn/internal/version.Date=${DATE}" \
      -o /out/usr/local/bin/ ./cmd/imd ./cmd/imrouter ./cmd/imctl \
 && mkdir -p /out/data /out/etc/imgn \
 && cp deploy/docker/imd.toml /out/etc/imgn/imd.toml

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
# Binaries and config stay root's; only the data directory is the node's.
COPY --from=build /out/usr/local/bin/ /usr/local/bin/
COPY --from=build /out/etc/imgn/ /etc/imgn/
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
# clients, admin API (metrics, health), direct mesh links
EXPOSE 9090 9091 9092
ENV PATH=/usr/local/bin
CMD ["imd", "--config", "/etc/imgn/imd.toml"]
