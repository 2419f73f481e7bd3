//! mqtt-rpc: request/response over MQTT. This file only assembles the crate: the pure
//! protocol and tables, the Rust client, and (with the `python` feature) the Python module
//! `mqtt_rpc._core`.

// Everything but the binding is safe Rust; the binding's unsafe code is PyO3's, which its
// macros generate.
#[forbid(unsafe_code)]
pub mod acks;
#[forbid(unsafe_code)]
pub mod client;
#[forbid(unsafe_code)]
pub mod link;
#[forbid(unsafe_code)]
mod locking;
#[forbid(unsafe_code)]
pub mod metrics;
#[forbid(unsafe_code)]
pub mod pending;
#[forbid(unsafe_code)]
pub mod pool;
#[forbid(unsafe_code)]
pub mod presence;
#[forbid(unsafe_code)]
pub mod protocol;
#[forbid(unsafe_code)]
pub mod quota;
#[forbid(unsafe_code)]
pub mod responder;
#[forbid(unsafe_code)]
pub mod subscriptions;
#[forbid(unsafe_code)]
pub mod tls;

#[cfg(feature = "python")]
mod python;

pub use client::{CallError, ClientOptions, Outcome, RpcClient, Stats, Waiter};
pub use link::{ConnectionOptions, Protocol};
