//! The usage aggregator, ClickHouse migrations and usage queries (being written).
