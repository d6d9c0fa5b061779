//! Moving PostgreSQL sequences and identities past the ids SQLite handed out, so that the
//! application's first insert after cutover does not collide. The target is the larger of
//! the column's max() and SQLite's `sqlite_sequence` counter for the table (AUTOINCREMENT
//! never reuses an id, even a deleted one). Sequences only move forward.

use crate::error::PgError;
use crate::mapping::TableMap;
use tokio_postgres::GenericClient;

/// One sequence that was moved.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceAdvance {
    pub table: String,
    pub column: String,
    pub sequence: String,
    pub value: i64,
}

/// Advances the sequence behind every identity/serial column of the mapped tables.
/// `sqlite_sequence` is the table ferry mirrors SQLite's `sqlite_sequence` into, if any.
pub async fn advance_sequences<C: GenericClient>(
    client: &C,
    maps: &[TableMap],
    sqlite_sequence: Option<&TableMap>,
) -> Result<Vec<SequenceAdvance>, PgError> {
    let mut out = Vec::new();
    for map in maps {
        let q = map.qualified();
        for c in &map.columns {
            if !c.pg_type.is_integer() {
                continue;
            }
            let seq: Option<String> = client
                .query_one(
                    "SELECT pg_get_serial_sequence($1::text, $2::text)",
                    &[&q, &c.target],
                )
                .await
                .map_err(|e| {
                    PgError::pg(format!("looking up the sequence of {q}.{}", c.target), e)
                })?
                .get(0);
            let Some(seq) = seq else { continue };
            let max_sql = format!(
                "SELECT COALESCE(max({})::bigint, 0) FROM {q}",
                crate::ident::quote_ident(&c.target)
            );
            let mut target: i64 = client
                .query_one(&max_sql, &[])
                .await
                .map_err(|e| PgError::pg(format!("reading max({}) of {q}", c.target), e))?
                .get(0);
            if let Some(ss) = sqlite_sequence {
                let sql = format!(
                    "SELECT COALESCE(max(seq::bigint), 0) FROM {} WHERE name = $1",
                    ss.qualified()
                );
                if let Ok(row) = client.query_one(&sql, &[&map.source.name]).await {
                    target = target.max(row.get::<_, i64>(0));
                }
            }
            if target < 1 {
                continue;
            }
            // Forward only: never below the sequence's own position.
            let v: i64 = client
                .query_one(
                    "SELECT setval($1::text::regclass, GREATEST($2::bigint, COALESCE(pg_sequence_last_value($1::text::regclass), 0)), true)",
                    &[&seq, &target],
                )
                .await
                .map_err(|e| PgError::pg(format!("advancing sequence {seq}"), e))?
                .get(0);
            out.push(SequenceAdvance {
                table: map.source.name.clone(),
                column: c.target.clone(),
                sequence: seq,
                value: v,
            });
        }
    }
    Ok(out)
}
