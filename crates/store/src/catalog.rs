//! The SQLite catalog: which volumes exist, their settings and state, and
//! who has them attached.

use std::path::Path;
use std::time::{Duration, Instant};

use msb_spec::{Labels, VolumeKind, VolumeName};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

/// Marks a SQLite file as ours (`PRAGMA application_id`, "msb1").
const APPLICATION_ID: i32 = 0x6d73_6231;
/// Schema version this build writes and understands.
const SCHEMA_VERSION: i32 = 2;
/// How long a writer waits for another process's transaction. Writers hold
/// the database for microseconds, so reaching this means something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE volumes (
    name         TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('dir', 'disk')),
    state        TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
    quota_mib    INTEGER,
    capacity_mib INTEGER,
    labels       TEXT NOT NULL,
    created_us   INTEGER NOT NULL,
    token        TEXT NOT NULL
) STRICT;
CREATE INDEX volumes_by_age ON volumes (created_us DESC);
CREATE TABLE attachments (
    id      TEXT PRIMARY KEY NOT NULL,
    volume  TEXT NOT NULL,
    holder  TEXT NOT NULL,
    mode    TEXT NOT NULL CHECK (mode IN ('rw', 'ro'))
) STRICT;
CREATE INDEX attachments_by_volume ON attachments (volume);
";

/// Version 2 adds named sandboxes and the volumes they reference; a version 1
/// database is upgraded by creating these tables.
const SCHEMA_V2: &str = "
CREATE TABLE sandboxes (
    name       TEXT PRIMARY KEY NOT NULL,
    config     TEXT NOT NULL,
    created_us INTEGER NOT NULL
) STRICT;
CREATE TABLE sandbox_volumes (
    sandbox TEXT NOT NULL,
    volume  TEXT NOT NULL,
    PRIMARY KEY (sandbox, volume)
) STRICT;
CREATE INDEX sandbox_volumes_by_volume ON sandbox_volumes (volume);
";

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The published microsandbox and this msb both default to
    /// `~/.microsandbox/db/msb.db`; its database is recognised by its
    /// migration bookkeeping or its tables.
    #[error(
        "database {path} belongs to another microsandbox installation (it is left untouched); run this msb with a home of its own, e.g. `MSB_HOME=~/.msb msb ...` (the other one reads MSB_HOME too, so set it for this msb only)"
    )]
    OtherInstallation { path: String },
    #[error(
        "database {path} belongs to another program (it is left untouched); run msb with a home of its own, e.g. `MSB_HOME=~/.msb msb ...`"
    )]
    Foreign { path: String },
    #[error(
        "{path} is not a SQLite database (it is left untouched); move it away or run msb with a home of its own, e.g. `MSB_HOME=~/.msb msb ...`"
    )]
    NotSqlite { path: String },
    #[error(
        "database {path} has schema version {found}, newer than this msb understands ({SCHEMA_VERSION}); refusing to use it"
    )]
    Newer { path: String, found: i32 },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
}

/// One row of the `volumes` table.
#[derive(Debug, Clone)]
pub struct VolumeRow {
    pub name: VolumeName,
    pub kind: VolumeKind,
    pub state: State,
    pub quota_mib: Option<u32>,
    pub capacity_mib: Option<u32>,
    pub labels: Labels,
    pub created_us: i64,
    pub token: String,
}

/// Lifecycle state of a volume row. Only `Ready` volumes are visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Creating,
    Ready,
    Removing,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Ready => "ready",
            State::Removing => "removing",
        }
    }
}

/// One row of the `attachments` table.
#[derive(Debug, Clone)]
pub struct AttachRow {
    pub id: String,
    pub holder: String,
    pub read_write: bool,
}

pub struct Catalog {
    conn: Connection,
}

impl Catalog {
    /// Opens (creating if absent) the catalog at `path`. A database that is
    /// not ours, or is newer, is refused and left untouched.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        // Some steps (a read-only look at a file another process is turning
        // into WAL, the switch to WAL itself) report "busy" at once instead
        // of calling the busy handler, so the whole open waits and retries
        // while another process sets the file up.
        let start = Instant::now();
        loop {
            match Self::open_once(path) {
                Err(CatalogError::Sqlite(e)) if is_busy(&e) && start.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                done => return done,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, CatalogError> {
        // Identify an existing file through a read-only connection first: a
        // read-write one could checkpoint someone else's WAL when it closes.
        if path.exists() {
            let probe = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            probe.busy_timeout(BUSY_TIMEOUT)?;
            check_identity(&probe, path)?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let fresh = check_identity(&conn, path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with NORMAL survives any process crash; only a power loss can
        // drop the last commits, and the reconcile step repairs what follows.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut cat = Catalog { conn };
        if fresh {
            cat.initialize(path)?;
        } else {
            cat.upgrade()?;
        }
        Ok(cat)
    }

    fn initialize(&mut self, path: &Path) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have initialized it while we waited.
        let app_id: i32 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        if app_id == 0 {
            if has_tables(&tx)? {
                return Err(foreign(&tx, path)?);
            }
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(SCHEMA_V2)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Brings an older schema of ours up to [`SCHEMA_VERSION`].
    fn upgrade(&mut self) -> Result<(), CatalogError> {
        let version: i32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version >= SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have upgraded it while we waited.
        let version: i32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 1 {
            tx.execute_batch(SCHEMA_V2)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn insert_creating(&mut self, row: &VolumeRow) -> Result<bool, CatalogError> {
        let labels = serde_json::to_string(row.labels.as_map()).expect("labels serialize");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT INTO volumes (name, kind, state, quota_mib, capacity_mib, labels, created_us, token)
             VALUES (?1, ?2, 'creating', ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING",
            params![
                row.name.as_str(),
                row.kind.as_str(),
                row.quota_mib,
                row.capacity_mib,
                labels,
                row.created_us,
                row.token
            ],
        )?;
        tx.commit()?;
        Ok(inserted == 1)
    }

    pub fn set_state(&mut self, name: &VolumeName, state: State) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE volumes SET state = ?2 WHERE name = ?1",
            params![name.as_str(), state.as_str()],
        )?;
        Ok(())
    }

    pub fn delete(&mut self, name: &VolumeName) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM attachments WHERE volume = ?1", [name.as_str()])?;
        tx.execute("DELETE FROM volumes WHERE name = ?1", [name.as_str()])?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, name: &VolumeName) -> Result<Option<VolumeRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE name = ?1"))?;
        Ok(stmt.query_row([name.as_str()], read_row).optional()?)
    }

    /// Ready volumes, newest first.
    pub fn list_ready(&self) -> Result<Vec<VolumeRow>, CatalogError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{SELECT} WHERE state = 'ready' ORDER BY created_us DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([], read_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Volumes left in `creating` or `removing` by an interrupted process.
    pub fn list_unfinished(&self) -> Result<Vec<VolumeRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE state != 'ready'"))?;
        let rows = stmt.query_map([], read_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn attachments(&self, name: &VolumeName) -> Result<Vec<AttachRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, holder, mode FROM attachments WHERE volume = ?1")?;
        let rows = stmt
            .query_map([name.as_str()], |r| {
                Ok(AttachRow {
                    id: r.get(0)?,
                    holder: r.get(1)?,
                    read_write: r.get::<_, String>(2)? == "rw",
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn insert_attachment(
        &mut self,
        name: &VolumeName,
        row: &AttachRow,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "INSERT INTO attachments (id, volume, holder, mode) VALUES (?1, ?2, ?3, ?4)",
            params![
                row.id,
                name.as_str(),
                row.holder,
                if row.read_write { "rw" } else { "ro" }
            ],
        )?;
        Ok(())
    }

    pub fn delete_attachment(&mut self, id: &str) -> Result<(), CatalogError> {
        self.conn
            .execute("DELETE FROM attachments WHERE id = ?1", [id])?;
        Ok(())
    }
}

/// One row of the `sandboxes` table, with the volumes it references.
#[derive(Debug, Clone)]
pub struct SandboxRow {
    pub name: String,
    pub config: String,
    pub created_us: i64,
    pub volumes: Vec<VolumeName>,
}

impl Catalog {
    /// Inserts a sandbox unless one of that name exists; returns whether it
    /// was inserted.
    pub fn insert_sandbox(&mut self, row: &SandboxRow) -> Result<bool, CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT INTO sandboxes (name, config, created_us) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO NOTHING",
            params![row.name, row.config, row.created_us],
        )?;
        if inserted == 1 {
            for v in &row.volumes {
                tx.execute(
                    "INSERT OR IGNORE INTO sandbox_volumes (sandbox, volume) VALUES (?1, ?2)",
                    params![row.name, v.as_str()],
                )?;
            }
        }
        tx.commit()?;
        Ok(inserted == 1)
    }

    pub fn get_sandbox(&self, name: &str) -> Result<Option<SandboxRow>, CatalogError> {
        let row = self
            .conn
            .query_row(
                "SELECT name, config, created_us FROM sandboxes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(name, config, created_us)| self.with_volumes(name, config, created_us))
            .transpose()
    }

    /// Sandboxes, newest first.
    pub fn list_sandboxes(&self) -> Result<Vec<SandboxRow>, CatalogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, config, created_us FROM sandboxes ORDER BY created_us DESC, name",
        )?;
        let rows: Vec<(String, String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(name, config, created_us)| self.with_volumes(name, config, created_us))
            .collect()
    }

    fn with_volumes(
        &self,
        name: String,
        config: String,
        created_us: i64,
    ) -> Result<SandboxRow, CatalogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT volume FROM sandbox_volumes WHERE sandbox = ?1 ORDER BY volume",
        )?;
        let volumes = stmt
            .query_map([&name], |r| {
                let v: String = r.get(0)?;
                VolumeName::new(v).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        e.to_string().into(),
                    )
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(SandboxRow {
            name,
            config,
            created_us,
            volumes,
        })
    }

    /// Deletes a sandbox and its volume references; returns whether it existed.
    pub fn delete_sandbox(&mut self, name: &str) -> Result<bool, CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM sandbox_volumes WHERE sandbox = ?1", [name])?;
        let deleted = tx.execute("DELETE FROM sandboxes WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(deleted == 1)
    }

    /// Names of the sandboxes referencing a volume.
    pub fn sandboxes_using(&self, volume: &VolumeName) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sandbox FROM sandbox_volumes WHERE volume = ?1 ORDER BY sandbox",
        )?;
        let rows = stmt
            .query_map([volume.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

const SELECT: &str =
    "SELECT name, kind, state, quota_mib, capacity_mib, labels, created_us, token FROM volumes";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRow> {
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let name: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let state: String = r.get(2)?;
    let labels: String = r.get(5)?;
    Ok(VolumeRow {
        name: VolumeName::new(name).map_err(|e| bad(0, e.to_string()))?,
        kind: kind
            .parse()
            .map_err(|e: msb_spec::VolumeKindError| bad(1, e.to_string()))?,
        state: match state.as_str() {
            "creating" => State::Creating,
            "ready" => State::Ready,
            "removing" => State::Removing,
            other => return Err(bad(2, format!("unknown state {other:?}"))),
        },
        quota_mib: r.get(3)?,
        capacity_mib: r.get(4)?,
        labels: serde_json::from_str(&labels).map_err(|e| bad(5, e.to_string()))?,
        created_us: r.get(6)?,
        token: r.get(7)?,
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Refuses a database that is not ours or is newer; returns whether it is
/// still empty (to be initialized).
fn check_identity(conn: &Connection, path: &Path) -> Result<bool, CatalogError> {
    let name = || path.display().to_string();
    // One read transaction for the header and the table list: read as two
    // snapshots, another opener's schema could appear in between and a file
    // being set up would look foreign. Dropping it rolls back (a no-op).
    let snapshot = conn.unchecked_transaction()?;
    // Reading the header fails with NOTADB on a file that is not SQLite.
    let (app_id, version): (i32, i32) = match snapshot.query_row(
        "SELECT * FROM pragma_application_id, pragma_user_version",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ) {
        Ok(v) => v,
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Err(CatalogError::NotSqlite { path: name() });
        }
        Err(e) => return Err(e.into()),
    };
    if app_id != APPLICATION_ID && (app_id != 0 || version != 0 || has_tables(&snapshot)?) {
        return Err(foreign(&snapshot, path)?);
    }
    if version > SCHEMA_VERSION {
        return Err(CatalogError::Newer {
            path: name(),
            found: version,
        });
    }
    Ok(app_id == 0)
}

/// Tells another microsandbox's database (the published one keeps its
/// migrations in `seaql_migrations`, older releases in `_sqlx_migrations`,
/// and its records in `sandbox`/`sandboxes` and `volume`) from any other
/// program's.
fn foreign(conn: &Connection, path: &Path) -> Result<CatalogError, rusqlite::Error> {
    let path = path.display().to_string();
    let peer: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN
         ('seaql_migrations', '_sqlx_migrations', 'sandbox', 'sandboxes', 'volume')",
        [],
        |r| r.get(0),
    )?;
    Ok(if peer > 0 {
        CatalogError::OtherInstallation { path }
    } else {
        CatalogError::Foreign { path }
    })
}

fn has_tables(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n > 0)
}
