//! imgpipe's event contracts. `avro/*.avsc` is the source of truth; the Rust types in [`events`]
//! mirror it (a test round-trips each through its schema), [`topics`] lists every topic with its
//! settings, and [`codec`] reads and writes the Confluent wire format through the schema registry.

pub mod codec;
pub mod events;
pub mod registry;
pub mod topics;

pub use codec::{Codec, CodecError};
pub use events::Event;
pub use registry::RegistryConfig;
