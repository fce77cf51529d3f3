//! All integration tests, in one binary: the real service on free loopback ports, driven over
//! real sockets (HTTP in, gRPC out), against the in-memory store and a real `redis-server`.

mod cluster_harness;
mod fault_proxy;
mod helpers;
mod intercepted_store;
mod process;
mod redis_harness;

mod api_auth;
mod attribution;
mod calling_list;
mod check;
mod check_cache;
mod cli;
mod cluster;
mod conformance;
mod console;
mod dates_and_duplicates;
mod export;
mod ingest;
mod json_api;
mod lifecycle;
mod metrics;
mod outbound_webhooks;
mod redaction;
mod redis_faults;
mod redis_layout_v2;
mod redis_store;
mod replicas;
mod resume;
mod security;
mod stream;
mod team_workflow;
mod tls;
mod transport_limits;
