//! Cost of the api's auth step: a verified-key cache hit (parse, cache lookup, constant-time
//! secret compare, tenant token bucket), against a miss that verifies the salted hash. Runs
//! without Kafka on an in-memory `IdentityView` holding 10,000 keys.
//!
//! `cargo bench --bench auth_cache`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)] // tests and benches fail by panicking

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ingest::auth::{AuthConfig, Authenticator, IdentityView};
use ingest::identity_log::keys;
use schemas::events::{ApiKey, IdentityChange, KeyStatus, Tenant, TenantStatus};

fn key_change(tenant_id: &str) -> (IdentityChange, String) {
    let issued = keys::issue();
    let change = IdentityChange {
        entity_id: format!("key:{}", issued.key_id),
        changed_at_ms: 0,
        tenant: None,
        api_key: Some(ApiKey {
            key_id: issued.key_id,
            tenant_id: tenant_id.into(),
            salt: issued.salt,
            secret_hash: issued.secret_hash.to_vec(),
            status: KeyStatus::Active,
            created_at_ms: 0,
        }),
        signing_key: None,
    };
    (change, issued.api_key)
}

fn auth(c: &mut Criterion) {
    let Ok(view) = IdentityView::in_memory(&AuthConfig::default()) else {
        return;
    };
    let mut keys = Vec::new();
    for t in 0..100 {
        let tenant_id = format!("t{t}");
        view.apply(
            &format!("tenant:{tenant_id}"),
            Some(&IdentityChange {
                entity_id: format!("tenant:{tenant_id}"),
                changed_at_ms: 0,
                // The bucket never runs dry over the benchmark, so every call is admitted.
                tenant: Some(Tenant {
                    id: tenant_id.clone(),
                    name: tenant_id.clone(),
                    status: TenantStatus::Active,
                    rate_limit_per_second: i32::MAX,
                    burst: i32::MAX,
                    created_at_ms: 0,
                    allowed_sources: Vec::new(),
                }),
                api_key: None,
                signing_key: None,
            }),
        );
        for _ in 0..100 {
            let (change, api_key) = key_change(&tenant_id);
            view.apply(&change.entity_id, Some(&change));
            keys.push(api_key);
        }
    }
    view.confirm_fresh();
    for key in &keys {
        assert!(view.authenticate(key).is_ok(), "warm-up");
    }
    let hot = keys[4242].clone();
    c.bench_function("auth_cache_hit", |b| {
        b.iter(|| black_box(view.authenticate(black_box(&hot))))
    });
    let mut i = 0;
    c.bench_function("auth_cache_hit_10k_keys_round_robin", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(view.authenticate(black_box(&keys[i])))
        })
    });
    // A key id the view knows, presented with a wrong secret it has not cached: the full
    // salted-hash verification (what a cache miss costs).
    let (change, _) = key_change("t1");
    view.apply(&change.entity_id, Some(&change));
    let key_id = change.api_key.map(|k| k.key_id).unwrap_or_default();
    let wrong = format!("imgp_{key_id}_{}", "ab".repeat(32));
    c.bench_function("auth_cache_miss_verify", |b| {
        b.iter(|| black_box(view.authenticate(black_box(&wrong))))
    });
    let unknown = format!("imgp_{}_{}", "0".repeat(16), "ab".repeat(32));
    c.bench_function("auth_unknown_key", |b| {
        b.iter(|| black_box(view.authenticate(black_box(&unknown))))
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
