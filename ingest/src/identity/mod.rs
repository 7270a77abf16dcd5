//! The identity service (management plane): tenants, API keys, quotas (being written).
