//! mqtt-rpc: request/response over MQTT. This file only assembles the crate: the pure
//! protocol and tables, the Rust client, and (with the `python` feature) the Python module
//! `mqtt_rpc._core`.

pub mod acks;
pub mod client;
pub mod link;
pub mod metrics;
pub mod pending;
pub mod pool;
pub mod presence;
pub mod protocol;
pub mod quota;
pub mod responder;
pub mod subscriptions;
pub mod tls;

#[cfg(feature = "python")]
mod python;

pub use client::{CallError, ClientOptions, Outcome, RpcClient, Stats, Waiter};
pub use link::{ConnectionOptions, Protocol};
