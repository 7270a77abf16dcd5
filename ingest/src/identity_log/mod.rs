//! The `identity.changes` log as both of its sides use it: the identity service writes it, every
//! api's identity view reads it. One module holds what the two must agree on: the record format
//! and entity keys ([`changes`]: `tenant:<id>` / `key:<id>` / `signing-key:<id>`, full state or
//! tombstone, and the reader that tails the log), how API keys are made, hashed and checked
//! ([`keys`]), and the normal form of a tenant's allowed source prefixes ([`sources`]). How a
//! signing key's values are derived is [`crate::signing`]'s: the log carries none of them.

pub mod changes;
pub mod keys;
pub mod sources;
