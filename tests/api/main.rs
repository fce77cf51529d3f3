//! All integration tests, in one binary: the real service on free loopback ports, driven over
//! real sockets (HTTP in, gRPC out), against the in-memory store and a real `redis-server`.

mod helpers;
mod process;
mod redis_harness;

mod check;
mod cli;
mod conformance;
mod ingest;
mod lifecycle;
mod metrics;
mod redis_store;
mod replicas;
mod security;
mod stream;
