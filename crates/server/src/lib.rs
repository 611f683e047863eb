//! The Ignis control plane: an HTTP API over a job store and a queue, and
//! workers that run each job in its own pre-warmed microVM.
//!
//! The embedded default is one process: SQLite in the data directory and an
//! in-process queue. Store and queue are traits, so the scale-out variants
//! (PostgreSQL, NATS JetStream) plug in without touching the API or workers.

pub mod api;
pub mod config;
pub mod embedded;
pub mod events;
pub mod fleet;
pub mod job;
pub mod keys;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
#[cfg(test)]
pub(crate) mod test_kit;
pub mod webhook;
pub mod worker;
