//! mqtt-rpc: request/response over MQTT. This file only assembles the crate: the pure
//! protocol and tables, the Rust client, and (with the `python` feature) the Python module
//! `mqtt_rpc._core`.

// Everything but the binding is safe Rust; the binding's unsafe code is PyO3's, which its
// macros generate.
#![deny(unsafe_code)]

pub mod acks;
pub mod client;
pub mod link;
mod locking;
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
#[allow(unsafe_code)]
mod python;

pub use client::{CallError, ClientOptions, Outcome, RpcClient, Stats, Waiter};
pub use link::{ConnectionOptions, Protocol};
