//! Decode → resize → encode, the CPU-bound core of a resize (being written).
