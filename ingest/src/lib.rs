//! The front door of imgpipe: the stateless **api** (data plane: authenticate, validate, produce
//! a request, await its reply) and the **identity** service (management plane: tenants and keys,
//! the only writer of `identity.changes`). [`auth`] is the seam between them: the api asks it who
//! a bearer key (or a signed URL's key id) belongs to, and it answers from a local view of
//! `identity.changes`. [`signing`] derives signing keys' values from the deployment's secret.

pub mod api;
pub mod auth;
pub mod identity;
pub mod identity_log;
pub mod signing;
