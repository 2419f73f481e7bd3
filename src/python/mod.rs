//! The Python module `mqtt_rpc._core`: a thin layer that converts types and maps errors.
//! No protocol logic lives here; it is all in the pure Rust core.

mod arguments;
mod bridge;
mod client;
mod convert;
mod errors;
mod options;
mod responder;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::CoreClient>()?;
    m.add_class::<bridge::LoopBridge>()?;
    m.add_class::<responder::CoreResponder>()?;
    m.add_class::<responder::ReplyHandle>()?;
    m.add_function(wrap_pyfunction!(options::client_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(options::responder_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(options::expand_client_id, m)?)?;
    m.add_function(wrap_pyfunction!(arguments::control_topic, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
