//! All integration tests, in one binary so they share one build and one set of helpers.

mod conformance;
mod redis_harness;
mod redis_store;
