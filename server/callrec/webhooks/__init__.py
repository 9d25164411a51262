"""Webhooks (SPEC §9): every event of the log pushed over HTTP to the operator's endpoints.

Why a package of its own: delivery is a second consumer of the event log with its own durable state
(one cursor per endpoint, attempts, dead letters), its own network policy (SSRF-safe, no redirects) and
its own clock (a retry schedule that spans 24 h and must survive restarts). The gRPC layer and the CLI
only translate to and from `WebhookDispatcher`.

Modules, each small and testable alone:

- `signing`: Standard Webhooks secrets (`whsec_...`) and signatures.
- `schedule`: Event Grid's retry schedule, `Retry-After`, and what an HTTP outcome means (pure).
- `destination`: which URLs may be called (https only, public addresses only unless
  `[webhooks_policy] allow_private`), checked when an endpoint is added and on every connection.
- `store`: the durable state in SQLite (`WebhookStorePort` for a PostgreSQL version later).
- `delivery`: `WebhookDispatcher`, one task per endpoint following the event log.
- `config`: the TOML `[[webhooks]]` list and `[webhooks_policy]` table.
- `errors`: what callers get, each with the gRPC status code it maps to.
"""
