//! The Ignis control plane: an HTTP API over a job store and a queue, and
//! workers that run each job in its own pre-warmed microVM.
//!
//! The embedded default (`ignis serve`) is one process: SQLite in the data
//! directory and an in-process queue. The distributed mode (`ignis api`,
//! `ignis worker`) puts PostgreSQL and NATS JetStream behind the same
//! seams (store, queue, bus, fleet), so the API handlers, the service and
//! the workers are the same code either way.

pub mod api;
pub mod config;
pub mod distributed;
pub mod embedded;
pub mod events;
pub mod fleet;
pub mod job;
pub mod keys;
pub mod metrics;
pub mod nats;
pub mod pool;
pub mod queue;
pub mod redact;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
#[cfg(test)]
pub(crate) mod test_kit;
pub mod webhook;
pub mod worker;
