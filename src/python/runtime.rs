//! The one tokio runtime of the process, built on first use.
//!
//! One worker thread and one blocking thread: measured on two cores, a second worker only
//! added contention, and rumqttc needs blocking threads for nothing but DNS lookups.
//! Python is never called from these threads (see `bridge.rs`).

use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

pub fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(1)
                .thread_name("mqtt-rpc")
                .enable_all()
                .build()
                .map_err(|e| format!("could not start the tokio runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}
