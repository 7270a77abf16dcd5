//! The `identity.changes` log as both of its sides use it: the identity service writes it, every
//! api's identity view reads it. One module holds what the two must agree on: the record format
//! and entity keys ([`changes`]: `tenant:<id>` / `key:<id>`, full state or tombstone, and the
//! reader that tails the log), and how API keys are made, hashed and checked ([`keys`]).

pub mod changes;
pub mod keys;
