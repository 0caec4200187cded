//! `sekisho backup` and `sekisho restore`: the store the config's `[store]` names, to a file and
//! back (sekisho-db's `backup.rs` holds the format; see docs/operations.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::read_config;

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// The store's database, refusing an embedded one that does not exist yet (there is nothing to
/// back up, and opening it would create it).
async fn open_existing(
    config: &sekisho_config::Config,
    base: Option<&Path>,
) -> anyhow::Result<sekisho_db::Database> {
    if config.store.database.is_none() {
        let file = sekisho_db::data_dir(&config.store, base).join("sekisho.db");
        anyhow::ensure!(
            file.exists(),
            "there is no store at {}: nothing to back up (check [store] data_dir)",
            file.display()
        );
    }
    Ok(sekisho_auth::open_database(config, base).await?)
}

/// `sekisho backup --config FILE --out FILE`: a consistent copy while the gateway runs, written
/// beside its destination and renamed into place once complete, so `--out` never names half a
/// backup; `--out -` writes to stdout; `--out DIR` (an existing directory) writes
/// `DIR/sekisho-<UTC time>.jsonl` and, with `--keep N`, removes all but the newest N there.
pub(crate) fn backup(config_path: &Path, out: &Path, keep: Option<u32>) -> anyhow::Result<()> {
    block_on(async move {
        let (config, _) = read_config(config_path)?;
        let into_dir = out.is_dir();
        anyhow::ensure!(
            keep.is_none() || into_dir,
            "--keep prunes a directory of backups: give --out an existing directory"
        );
        let database = open_existing(&config, config_path.parent()).await?;
        let (summary, destination) = if out == Path::new("-") {
            let stdout = std::io::stdout();
            let summary = database
                .backup(std::io::BufWriter::new(stdout.lock()))
                .await?;
            database
                .record_backup("(stdout)", &summary)
                .await
                .context("the backup is complete, but recording it (for backup_age) failed")?;
            (summary, "(stdout)".to_owned())
        } else if into_dir {
            let (file, summary) = into_directory(&database, out, keep).await?;
            (summary, file.display().to_string())
        } else {
            let summary = to_file(&database, out).await?;
            (summary, out.display().to_string())
        };
        eprintln!(
            "sekisho: backup of {} written to {destination}: {} tables, {} rows, {} bytes, sha256 {}",
            database.url(),
            summary.rows.len(),
            summary.total_rows(),
            summary.bytes,
            summary.sha256
        );
        database.close().await;
        Ok(())
    })
}

/// A backup written to `out` through `out.partial` (synced, then renamed), and recorded.
async fn to_file(
    database: &sekisho_db::Database,
    out: &Path,
) -> anyhow::Result<sekisho_db::BackupSummary> {
    let partial = partial_path(out);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let written = database.backup(&mut writer).await;
    let finished = written.map_err(anyhow::Error::from).and_then(|summary| {
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial, out)
            .with_context(|| format!("cannot move the backup to {}", out.display()))?;
        sync_directory(out);
        Ok(summary)
    });
    let summary = match finished {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error.context(format!("backup to {} failed", out.display())));
        }
    };
    database
        .record_backup(&out.display().to_string(), &summary)
        .await
        .context("the backup is complete, but recording it (for backup_age) failed")?;
    Ok(summary)
}

/// The prefix and suffix of the backups a directory holds (`sekisho-20261203T183800.123Z.jsonl`:
/// their names sort by time).
const PREFIX: &str = "sekisho-";
const SUFFIX: &str = ".jsonl";

/// A backup into `dir` under a name of the current UTC time; with `keep`, all but the newest
/// `keep` backups of the directory are removed afterwards.
async fn into_directory(
    database: &sekisho_db::Database,
    dir: &Path,
    keep: Option<u32>,
) -> anyhow::Result<(PathBuf, sekisho_db::BackupSummary)> {
    let file = dir.join(file_name(std::time::SystemTime::now()));
    let summary = to_file(database, &file).await?;
    if let Some(keep) = keep {
        for removed in prune(dir, keep as usize)? {
            tracing::info!(file = %removed.display(), "old backup removed (retention)");
        }
    }
    Ok((file, summary))
}

/// `sekisho-YYYYMMDDTHHMMSS.mmmZ.jsonl` for `at`.
fn file_name(at: std::time::SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    format!(
        "{PREFIX}{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z{SUFFIX}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Removes all but the newest `keep` backups of `dir` (by name, which is by time), and partial
/// files older than a day (left by a backup that was killed); returns what it removed.
fn prune(dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut backups = Vec::new();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        if name.ends_with(SUFFIX) {
            backups.push(name);
        } else if name.ends_with(".partial") {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600));
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    backups.sort_unstable_by(|a, b| b.cmp(a));
    for old in backups.iter().skip(keep.max(1)) {
        let path = dir.join(old);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        removed.push(path);
    }
    Ok(removed)
}

/// `[store.backup]`: every `interval`, a backup into `dir` unless one was recorded more recently
/// (by another instance on the same database, or `sekisho backup`), then the retention. Runs on
/// a connection of its own, so the backup's read transaction never holds one the gateway needs.
/// A failure is logged and tried again after a minute (or the interval, when shorter).
pub(crate) async fn schedule(
    database: sekisho_db::Database,
    dir: PathBuf,
    schedule: sekisho_config::ScheduledBackup,
) {
    let interval = schedule.interval.0;
    let retry = interval.min(Duration::from_secs(60));
    loop {
        let since_last = database
            .last_backup_age()
            .await
            .map(Duration::from_secs_f64);
        let wait = match since_last {
            Some(age) if age < interval => interval - age,
            _ => Duration::ZERO,
        };
        tokio::time::sleep(wait).await;
        if wait > Duration::ZERO {
            // Another backup may have been recorded meanwhile: look again.
            continue;
        }
        let taken = async {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            into_directory(&database, &dir, Some(schedule.keep.0)).await
        }
        .await;
        match taken {
            Ok((file, summary)) => tracing::info!(
                file = %file.display(),
                rows = summary.total_rows(),
                bytes = summary.bytes,
                "scheduled backup written"
            ),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), dir = %dir.display(), "scheduled backup failed");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// `FILE` → `FILE.partial` in the same directory (so the rename stays on one file system).
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Makes the rename durable (best effort: some file systems refuse to open a directory).
fn sync_directory(file: &Path) {
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Ok(directory) = std::fs::File::open(directory) {
        let _ = directory.sync_all();
    }
}

/// `sekisho restore --config FILE BACKUP`: replaces the store's content with the backup's, all
/// or nothing. Refuses while something answers on the config's admin address (an instance still
/// running would keep serving what it cached) unless `force`.
pub(crate) fn restore(config_path: &Path, file: &Path, force: bool) -> anyhow::Result<()> {
    block_on(async move {
        let (config, _) = read_config(config_path)?;
        if !force {
            let admin = config.admin.listen.0.clone();
            let connect = tokio::net::TcpStream::connect(admin.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                anyhow::bail!(
                    "something answers on the admin address {admin}: a sekisho instance still runs \
                     on this config; stop every instance using the store first (or pass --force)"
                );
            }
        }
        let reader = std::fs::File::open(file)
            .with_context(|| format!("cannot open the backup {}", file.display()))?;
        let database = sekisho_auth::open_database(&config, config_path.parent()).await?;
        let summary = database
            .restore(std::io::BufReader::new(reader))
            .await
            .with_context(|| format!("{}: nothing was restored", file.display()))?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "restored {} into {}: backup taken at {} ms since the epoch, {} rows",
            file.display(),
            database.url(),
            summary.created_at,
            summary.total_rows()
        )?;
        for (table, rows) in &summary.rows {
            writeln!(out, "  {table}: {rows}")?;
        }
        database.close().await;
        Ok(())
    })
}
