//! Schema migrations, applied in order and tracked with `PRAGMA user_version`.
//! Never edit a migration that has shipped: append a new one.

use rusqlite::Connection;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: corpora, conversations, turns, personas, texts, annotations, the job ledger.
    "CREATE TABLE corpora (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        format      TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE imports (
        id           INTEGER PRIMARY KEY,
        corpus_id    INTEGER NOT NULL REFERENCES corpora(id) ON DELETE CASCADE,
        path         TEXT NOT NULL,
        report       TEXT NOT NULL,
        imported_at  TEXT NOT NULL
    );
    CREATE TABLE conversations (
        id            TEXT PRIMARY KEY,
        corpus_id     INTEGER NOT NULL REFERENCES corpora(id) ON DELETE CASCADE,
        original_id   TEXT NOT NULL,
        turn_count    INTEGER NOT NULL,
        content_hash  TEXT NOT NULL,
        participants  TEXT,
        meta          TEXT
    );
    CREATE INDEX conversations_by_corpus ON conversations(corpus_id, id);
    CREATE TABLE turns (
        conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        turn_index       INTEGER NOT NULL,
        original_id      TEXT,
        speaker          TEXT NOT NULL,
        role             TEXT NOT NULL,
        text             TEXT NOT NULL,
        reply_to         INTEGER,
        labels           TEXT,
        PRIMARY KEY (conversation_id, turn_index)
    ) WITHOUT ROWID;
    CREATE TABLE personas (
        collection  TEXT NOT NULL,
        name        TEXT NOT NULL,
        position    INTEGER NOT NULL,
        body        TEXT NOT NULL,
        PRIMARY KEY (collection, name)
    ) WITHOUT ROWID;
    CREATE TABLE texts (
        collection  TEXT NOT NULL,
        name        TEXT NOT NULL,
        text        TEXT NOT NULL,
        PRIMARY KEY (collection, name)
    ) WITHOUT ROWID;
    CREATE TABLE annotations (
        id               INTEGER PRIMARY KEY,
        conversation_id  TEXT NOT NULL,
        turn_index       INTEGER NOT NULL,
        annotator        TEXT NOT NULL,
        scale            TEXT NOT NULL,
        body             TEXT NOT NULL,
        source           TEXT NOT NULL,
        UNIQUE (conversation_id, turn_index, annotator, scale, source)
    );
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        config      TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE job_units (
        job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        unit_key     TEXT NOT NULL,
        status       TEXT NOT NULL,
        result       TEXT NOT NULL,
        finished_at  TEXT NOT NULL,
        PRIMARY KEY (job_id, unit_key)
    ) WITHOUT ROWID;",
    // 2: the register of training runs (their files live in the run folders).
    "CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        dir         TEXT NOT NULL,
        method      TEXT NOT NULL,
        model       TEXT NOT NULL,
        config      TEXT NOT NULL,
        status      TEXT NOT NULL,
        summary     TEXT,
        sweep       TEXT,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX runs_by_sweep ON runs(sweep, id);",
];

pub(crate) fn migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
    }
    Ok(())
}
