//! Dequeue latency against a growing history (`bench/run.sh queue` runs it).
//!
//! For each history size it opens a fresh migrated SQLite store in a temp dir, inserts 50
//! users, `history` finished rows spread over them (completed, `started_at` set) and a few
//! pending rows per user, then times `Store::dequeue` in round-robin and FIFO mode. After each
//! claim the claimed row is completed (as the worker does) and a new pending row is inserted
//! for the same user, so every claim sees the same 50 waiting users; only the claim is timed.
//!
//! `cargo run --release -p atelier-store --example dequeue_bench [claims] [history sizes...]`
//! (defaults: 500 claims; 0 1000 10000 100000).

#![allow(clippy::expect_used)]

use atelier_domain::queue::QueueItemStatus;
use atelier_store::{DequeueMode, Store};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::Row;
use std::time::{Duration, Instant};

const USERS: usize = 50;
const PENDING_PER_USER: usize = 4;
/// Measurement rounds, alternating between the history sizes.
const ROUNDS: usize = 5;

type Error = Box<dyn std::error::Error>;

fn user_id(u: usize) -> String {
    format!("bench-user-{u:02}")
}

/// A session-sized JSON-ish payload (real sessions are a few KB; the size matters for scans).
const SESSION_SQL: &str = "'{\"graph\":\"' || hex(zeroblob(600)) || '\"}'";

async fn seed(pool: &SqlitePool, history: usize) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    for u in 0..USERS {
        sqlx::query(
            "INSERT INTO users (user_id, email, display_name, password_hash, is_admin, is_active)
             VALUES ($1, $2, $3, 'x', FALSE, TRUE)",
        )
        .bind(user_id(u))
        .bind(format!("{}@example.com", user_id(u)))
        .bind(user_id(u))
        .execute(&mut *tx)
        .await?;
    }
    if history > 0 {
        // Finished rows, oldest first, one second apart, round the users in turn; a tenth failed
        // or canceled (they count for last_served too).
        sqlx::query(&format!(
            "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < $1)
             INSERT INTO session_queue (queue_id, session_id, batch_id, status, status_sequence,
                 user_id, field_values, session, created_at, updated_at, started_at, completed_at)
             SELECT 'default', 'history-' || n, 'history-batch-' || (n / 10),
                 CASE n % 20 WHEN 7 THEN 'failed' WHEN 13 THEN 'canceled' ELSE 'completed' END, 2,
                 printf('bench-user-%02d', n % {USERS}), '[]', {SESSION_SQL},
                 STRFTIME('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || n || ' seconds'),
                 STRFTIME('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || (n + 1) || ' seconds'),
                 STRFTIME('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || n || ' seconds'),
                 STRFTIME('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || (n + 1) || ' seconds')
             FROM seq"
        ))
        .bind(i64::try_from(history)?)
        .execute(&mut *tx)
        .await?;
    }
    for _ in 0..PENDING_PER_USER {
        for u in 0..USERS {
            add_pending(&mut tx, &user_id(u)).await?;
        }
    }
    tx.commit().await?;
    // One huge insert leaves a huge WAL; a live server's history arrives a little at a time,
    // with checkpoints in between. Start from the steady state.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    Ok(())
}

async fn add_pending(conn: &mut sqlx::SqliteConnection, user: &str) -> Result<(), Error> {
    sqlx::query(&format!(
        "INSERT INTO session_queue (queue_id, session_id, batch_id, user_id, field_values, session)
         VALUES ('default', lower(hex(randomblob(16))), 'pending-batch', $1, '[]', {SESSION_SQL})"
    ))
    .bind(user)
    .execute(conn)
    .await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Microseconds, with the unit: `"412 µs"`.
fn us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

async fn explain(pool: &SqlitePool, sql: &str) -> Result<Vec<String>, Error> {
    let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
        .fetch_all(pool)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let detail: String = r.try_get("detail")?;
        out.push(detail);
    }
    Ok(out)
}

/// Times `claims` dequeues in `mode`, keeping the pending set steady. Returns the
/// latencies and the users served in order (for the fairness check).
async fn measure(
    store: &Store,
    pool: &SqlitePool,
    mode: DequeueMode,
    claims: usize,
) -> Result<(Vec<Duration>, Vec<String>), Error> {
    let mut times = Vec::with_capacity(claims);
    let mut served = Vec::with_capacity(claims);
    for _ in 0..claims {
        let started = Instant::now();
        let row = store.dequeue(mode, "bench-worker", "cpu").await?;
        times.push(started.elapsed());
        let row = row.ok_or("the queue ran dry")?;
        store
            .set_queue_status(row.item_id, QueueItemStatus::Completed, None)
            .await?;
        let mut conn = pool.acquire().await?;
        add_pending(&mut conn, row.user_id.as_str()).await?;
        served.push(row.user_id.as_str().to_owned());
    }
    Ok((times, served))
}

/// Times the pick `SELECT` alone (no claim, no write lock) on the bench's own connection.
async fn pick_only(
    pool: &SqlitePool,
    mode: DequeueMode,
    runs: usize,
) -> Result<Vec<Duration>, Error> {
    let mut conn = pool.acquire().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        sqlx::query(mode.pick_sql())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or("nothing pending")?;
        times.push(started.elapsed());
    }
    Ok(times)
}

struct Bench {
    history: usize,
    seed_s: f64,
    store: Store,
    pool: SqlitePool,
    rr: Vec<Duration>,
    fifo: Vec<Duration>,
    rr_pick: Vec<Duration>,
    fifo_pick: Vec<Duration>,
    fair: bool,
    _dir: tempfile::TempDir,
}

async fn open(history: usize) -> Result<Bench, Error> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("atelier.db");
    let store = Store::open_sqlite(&path).await?;
    store.migrate().await?;
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::from_secs(5)),
    )
    .await?;
    let seeded = Instant::now();
    seed(&pool, history).await?;
    let seed_s = seeded.elapsed().as_secs_f64();
    // Warm the caches and the prepared-statement caches.
    measure(&store, &pool, DequeueMode::RoundRobin, 10).await?;
    measure(&store, &pool, DequeueMode::Fifo, 10).await?;
    Ok(Bench {
        history,
        seed_s,
        store,
        pool,
        rr: Vec::new(),
        fifo: Vec::new(),
        rr_pick: Vec::new(),
        fifo_pick: Vec::new(),
        fair: true,
        _dir: dir,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let claims: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let mut sizes: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![0, 1_000, 10_000, 100_000];
    }
    let rounds = ROUNDS.min(claims.max(1));
    let per_round = claims.div_ceil(rounds);
    println!(
        "dequeue latency: {USERS} users with pending items ({PENDING_PER_USER} each), {} claims per mode \
         and history size in {rounds} interleaved rounds, one fresh SQLite file (WAL) per history size",
        per_round * rounds
    );
    let mut benches = Vec::new();
    for &history in &sizes {
        benches.push(open(history).await?);
    }
    if let Some(first) = benches.first() {
        for (name, mode) in [
            ("round-robin", DequeueMode::RoundRobin),
            ("FIFO", DequeueMode::Fifo),
        ] {
            println!("EXPLAIN QUERY PLAN ({name} pick):");
            for line in explain(&first.pool, mode.pick_sql()).await? {
                println!("    {line}");
            }
        }
    }
    // Rounds alternate between the databases so that load from elsewhere on the machine
    // spreads over every history size alike.
    for _ in 0..rounds {
        for b in &mut benches {
            let (rr, served) =
                measure(&b.store, &b.pool, DequeueMode::RoundRobin, per_round).await?;
            // Round-robin check: any USERS consecutive claims serve USERS distinct users.
            let window = USERS.min(served.len()).max(1);
            b.fair &= served.windows(window).all(|w| {
                let mut w = w.to_vec();
                w.sort();
                w.dedup();
                w.len() == window
            });
            b.rr.extend(rr);
            let (fifo, _) = measure(&b.store, &b.pool, DequeueMode::Fifo, per_round).await?;
            b.fifo.extend(fifo);
            b.rr_pick
                .extend(pick_only(&b.pool, DequeueMode::RoundRobin, per_round).await?);
            b.fifo_pick
                .extend(pick_only(&b.pool, DequeueMode::Fifo, per_round).await?);
        }
    }
    println!(
        "                   | round-robin claim (Store::dequeue)    | FIFO claim (Store::dequeue)"
    );
    println!("  history     seed |   median      p95      max  pick only |   median      p95      max  pick only");
    for b in &mut benches {
        for v in [&mut b.rr, &mut b.fifo, &mut b.rr_pick, &mut b.fifo_pick] {
            v.sort();
        }
        println!(
            "{:>9} {:>6.2} s | {:>8} {:>8} {:>8} {:>10} | {:>8} {:>8} {:>8} {:>10}{}",
            b.history,
            b.seed_s,
            us(percentile(&b.rr, 50.0)),
            us(percentile(&b.rr, 95.0)),
            us(percentile(&b.rr, 100.0)),
            us(percentile(&b.rr_pick, 50.0)),
            us(percentile(&b.fifo, 50.0)),
            us(percentile(&b.fifo, 95.0)),
            us(percentile(&b.fifo, 100.0)),
            us(percentile(&b.fifo_pick, 50.0)),
            if b.fair {
                ""
            } else {
                "  (round-robin order NOT fair!)"
            }
        );
    }
    for b in benches {
        b.pool.close().await;
        b.store.close().await;
    }
    Ok(())
}
