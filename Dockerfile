# The relay as a static binary on distroless, running as nonroot.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /relay ./cmd/relay

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /relay /relay
USER nonroot:nonroot
EXPOSE 8080
# Exec form: SIGTERM reaches the relay, which drains its batch and exits 0.
ENTRYPOINT ["/relay"]
CMD ["run"]
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/relay", "healthcheck"]
