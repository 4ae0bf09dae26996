//! Brings a pipeline's ClickHouse database to the current schema: creates the database and
//! the migrations table, applies every migration not yet recorded, and sets the raw table's
//! retention. Safe to run at every start and from several replicas at once (every statement
//! is idempotent).

use clickhouse::Client;
use tally_contracts::schema::{self, MIGRATIONS_TABLE};

pub async fn apply(client: &Client, db: &str, retention_days: Option<u32>) -> anyhow::Result<()> {
    for statement in schema::migrations_table(db) {
        client.query(&statement).execute().await?;
    }
    let applied: Vec<u32> = client
        .query(&format!("SELECT version FROM `{db}`.{MIGRATIONS_TABLE}"))
        .fetch_all()
        .await?;
    for migration in schema::migrations(db) {
        if applied.contains(&migration.version) {
            continue;
        }
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "applying schema migration"
        );
        for statement in &migration.statements {
            client.query(statement).execute().await?;
        }
        client
            .query(&format!(
                "INSERT INTO `{db}`.{MIGRATIONS_TABLE} (version, description) VALUES (?, ?)"
            ))
            .bind(migration.version)
            .bind(migration.description)
            .execute()
            .await?;
    }
    apply_retention(client, db, retention_days).await
}

/// Sets (or removes) the raw table's TTL when it differs from the wanted retention.
/// Existing parts are not rewritten at once; merges apply the TTL as they happen.
async fn apply_retention(client: &Client, db: &str, days: Option<u32>) -> anyhow::Result<()> {
    let engine: String = client
        .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(schema::EVENTS)
        .fetch_one()
        .await?;
    let has_ttl = engine.contains(" TTL ");
    let wanted = days.map(|d| format!("toIntervalDay({d})"));
    let current_matches = match &wanted {
        Some(interval) => has_ttl && engine.contains(interval.as_str()),
        None => !has_ttl,
    };
    if !current_matches {
        tracing::info!(retention_days = ?days, "changing the events table retention");
        client
            .query(&schema::retention_statement(db, days))
            .with_setting("materialize_ttl_after_modify", "0")
            .execute()
            .await?;
    }
    Ok(())
}
