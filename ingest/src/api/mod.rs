//! The api (data plane) (being written).
