//! Uploaded files on disk, stored once per content.
//!
//! An upload streams into `data_dir/tmp/` while it is hashed with blake3 and
//! counted against the size limit; nothing is held in memory beyond one
//! chunk. A complete file moves to `data_dir/attachments/<hh>/<hash>` (`hh`
//! = the first two hex digits), unless a file with that content is already
//! there. Clients' filenames are never used on disk: they are cleaned and
//! kept in the database only.
//!
//! Files are shared by every attachment row with the same hash. Adding a
//! row for a hash and removing the last row of a hash (then the file) both
//! happen under a transaction-scoped advisory lock on the hash, so a file is
//! never deleted while an upload is being recorded against it.
//!
//! Uploads not yet attached to a message are bounded per user
//! ([`PendingQuota`]: a count and a byte total, 413
//! `upload_quota_exceeded`), uploads stop while the data directory's file
//! system is short of its free margin ([`FileStore::ensure_free_space`],
//! 507 `insufficient_storage`), and a housekeeping task ([`run_cleanup`])
//! removes uploads never attached within 24 hours and temporary files a
//! crash left behind, in bounded batches.
//!
//! Also here: which content types may be served as themselves
//! ([`safe_content_type`]) and the `Content-Disposition` header for a
//! download ([`content_disposition`]).

use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use together_protocol::federation::{FileRef, Scope};


/// Longest stored filename, in characters.
pub const MAX_FILENAME_CHARS: usize = 255;

/// Where the files of a node live.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

/// A file written to the temporary directory and hashed, not yet in place.
#[derive(Debug)]
pub struct StagedFile {
    pub temp_path: PathBuf,
    pub hash: [u8; 32],
    pub size: u64,
    /// The first bytes of the content, for recognising the type.
    pub head: Vec<u8>,
}

/// Why an upload failed while streaming.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the file is empty")]
    Empty,
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error("writing the upload failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why an upload is refused or failed, beyond the streaming itself.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The user's pending uploads are at their quota (count or bytes).
    #[error("{0}")]
    Quota(String),
    /// The data directory's disk is short of its free margin.
    #[error("the node is short of disk space and takes no uploads for now")]
    DiskFull,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The data directory cannot be examined (the node's fault).
    #[error("{0}")]
    Io(String),
}

const HEAD_BYTES: usize = 16;

impl FileStore {
    pub fn new(data_dir: &Path) -> FileStore {
        FileStore { root: data_dir.to_path_buf() }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The final path of the file with this content hash.
    pub fn path_for(&self, hash: &[u8]) -> PathBuf {
        let hex = hex::encode(hash);
        self.root.join("attachments").join(&hex[..2]).join(hex)
    }

    /// Streams chunks into a temporary file, hashing and counting; stops at
    /// the first chunk that crosses `max_bytes`. The temporary file is
    /// removed on every failure.
    pub async fn stage<S, E>(&self, mut chunks: S, max_bytes: u64) -> Result<StagedFile, StageError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        let dir = self.tmp_dir();
        tokio::fs::create_dir_all(&dir).await?;
        let temp_path = dir.join(format!("upload-{}", Uuid::now_v7()));
        let mut file = tokio::fs::File::create(&temp_path).await?;
        let mut hasher = blake3::Hasher::new();
        let mut size: u64 = 0;
        let mut head = Vec::with_capacity(HEAD_BYTES);
        let result: Result<(), StageError> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| StageError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(StageError::TooLarge(max_bytes));
                }
                if head.len() < HEAD_BYTES {
                    let take = (HEAD_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            if size == 0 {
                return Err(StageError::Empty);
            }
            file.flush().await?;
            file.sync_data().await?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(err) = result {
            tokio::fs::remove_file(&temp_path).await.ok();
            return Err(err);
        }
        Ok(StagedFile {
            temp_path,
            hash: *hasher.finalize().as_bytes(),
            size,
            head,
        })
    }

    /// Moves a staged file into place (or drops it when that content is
    /// already stored). Call inside the transaction that holds
    /// [`lock_hash`] for the file and records its row.
    pub async fn commit(&self, staged: &StagedFile) -> std::io::Result<()> {
        let dest = self.path_for(&staged.hash);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            tokio::fs::remove_file(&staged.temp_path).await.ok();
            return Ok(());
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&staged.temp_path, &dest).await
    }

    /// Removes a staged file that will not be kept.
    pub async fn discard(&self, staged: &StagedFile) {
        tokio::fs::remove_file(&staged.temp_path).await.ok();
    }

    /// 507 `insufficient_storage` when the file system of the data
    /// directory has less than `min_free` bytes available (to unprivileged
    /// users). A margin of 0 never refuses.
    pub async fn ensure_free_space(&self, min_free: u64) -> Result<(), UploadError> {
        if min_free == 0 {
            return Ok(());
        }
        tokio::fs::create_dir_all(&self.root).await.map_err(|err| UploadError::Io(err.to_string()))?;
        let root = self.root.clone();
        let free = tokio::task::spawn_blocking(move || free_bytes(&root))
            .await
            .map_err(|err| UploadError::Io(err.to_string()))?
            .map_err(|err| UploadError::Io(format!("statvfs of the data directory: {err}")))?;
        if free < min_free {
            tracing::warn!(free, min_free, "uploads refused: the data directory's disk is nearly full");
            return Err(UploadError::DiskFull);
        }
        Ok(())
    }

    /// Removes temporary upload files older than `max_age` (left behind
    /// by a crash mid-upload). Returns how many were removed.
    pub async fn remove_stale_temp_files(&self, max_age: std::time::Duration) -> std::io::Result<u64> {
        let mut entries = match tokio::fs::read_dir(self.tmp_dir()).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await? {
            if !entry.file_name().to_string_lossy().starts_with("upload-") {
                continue;
            }
            let Ok(modified) = entry.metadata().await.and_then(|m| m.modified()) else {
                continue;
            };
            if now.duration_since(modified).is_ok_and(|age| age > max_age)
                && tokio::fs::remove_file(entry.path()).await.is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "stale temporary upload files removed");
        }
        Ok(removed)
    }

    /// Deletes the files of these hashes that no attachment row uses any more.
    pub async fn release(&self, db: &PgPool, hashes: &[Vec<u8>]) -> Result<(), sqlx::Error> {
        let mut hashes = hashes.to_vec();
        hashes.sort();
        hashes.dedup();
        for hash in hashes {
            let mut tx = db.begin().await?;
            lock_hash(&mut tx, &hash).await?;
            let used: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM attachments WHERE content_hash = $1)")
                .bind(&hash)
                .fetch_one(&mut *tx)
                .await?;
            if !used {
                match tokio::fs::remove_file(self.path_for(&hash)).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => tracing::warn!(error = %err, hash = %hex::encode(&hash), "could not remove an unused file"),
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Serialises every change to the set of rows using one content hash.
pub async fn lock_hash(conn: &mut PgConnection, hash: &[u8]) -> Result<(), sqlx::Error> {
    let mut key = [0u8; 8];
    key.copy_from_slice(&hash[..8]);
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from_le_bytes(key))
        .execute(conn)
        .await?;
    Ok(())
}

/// Uploads removed by one statement of the cleanup.
pub const CLEANUP_BATCH: i64 = 500;

/// How long an upload may wait for a message before the cleanup removes it.
pub const PENDING_UPLOAD_HOURS: i64 = 24;

/// Deletes uploads that were never attached to a message and are older
/// than `max_age` (24 hours in production), and their files when nothing
/// else uses them, [`CLEANUP_BATCH`] at a time. Returns how many uploads
/// were removed.
pub async fn remove_stale_uploads(db: &PgPool, store: &FileStore, max_age: Duration) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    loop {
        let batch = remove_stale_batch(db, store, max_age).await?;
        removed += batch;
        if batch < CLEANUP_BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// One batch of [`remove_stale_uploads`]; rows a sender is attaching right
/// now are skipped (and kept, when the message takes them).
async fn remove_stale_batch(db: &PgPool, store: &FileStore, max_age: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = Utc::now() - max_age;
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM attachments WHERE id IN (
             SELECT id FROM attachments WHERE message_id IS NULL AND created_at < $1
              ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING content_hash",
    )
    .bind(cutoff)
    .bind(CLEANUP_BATCH)
    .fetch_all(db)
    .await?;
    let removed = hashes.len() as u64;
    store.release(db, &hashes).await?;
    if removed > 0 {
        tracing::info!(removed, "stale uploads removed");
    }
    Ok(removed)
}

/// Every hour until `shutdown` (the first time at start): removes uploads
/// never attached within [`PENDING_UPLOAD_HOURS`], a batch at a time and
/// looking at `shutdown` between batches, and temporary files older than
/// an hour.
pub async fn run_cleanup(db: PgPool, store: FileStore, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        while !shutdown.is_cancelled() {
            match remove_stale_batch(&db, &store, Duration::hours(PENDING_UPLOAD_HOURS)).await {
                Ok(n) if n == CLEANUP_BATCH as u64 => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "stale upload cleanup failed");
                    break;
                }
            }
        }
        if let Err(err) = store.remove_stale_temp_files(std::time::Duration::from_secs(3600)).await {
            tracing::warn!(error = %err, "temporary upload cleanup failed");
        }
    }
}

/// Bytes available to unprivileged users on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A user's uploads that no message uses yet, and the quota on them.
#[derive(Debug, Clone, Copy)]
pub struct PendingQuota {
    pub max_count: u32,
    pub max_bytes: u64,
}

impl PendingQuota {
    pub fn from_limits(limits: &crate::config::Limits) -> PendingQuota {
        PendingQuota {
            max_count: limits.max_pending_uploads,
            max_bytes: limits.max_pending_upload_bytes,
        }
    }

    /// How many bytes one more upload may have, given what `user` holds
    /// pending; 413 `upload_quota_exceeded` when no upload fits.
    pub async fn room(&self, db: impl sqlx::PgExecutor<'_>, user: Uuid) -> Result<u64, UploadError> {
        let (count, bytes) = pending_of(db, user).await?;
        if count >= u64::from(self.max_count) {
            return Err(UploadError::Quota(format!(
                "you have {count} uploads waiting to be sent (at most {}); send or wait for them to expire",
                self.max_count
            )));
        }
        if bytes >= self.max_bytes {
            return Err(self.bytes_exceeded());
        }
        Ok(self.max_bytes - bytes)
    }

    /// 413 for an upload that would take the user past the byte quota.
    pub fn bytes_exceeded(&self) -> UploadError {
        UploadError::Quota(format!(
            "your uploads waiting to be sent would exceed {} bytes; send or wait for them to expire",
            self.max_bytes
        ))
    }
}

/// How many uploads `user` holds that no message uses, and their bytes.
pub async fn pending_of(db: impl sqlx::PgExecutor<'_>, user: Uuid) -> Result<(u64, u64), sqlx::Error> {
    let (count, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(file_size), 0)::bigint FROM attachments
          WHERE uploader_id = $1 AND message_id IS NULL",
    )
    .bind(user)
    .fetch_one(db)
    .await?;
    Ok((count.max(0) as u64, bytes.max(0) as u64))
}

/// A client's filename made safe to store and show: only the last path
/// component (either slash), no control characters, no leading dots, at
/// most [`MAX_FILENAME_CHARS`] characters; `file` when nothing is left.
pub fn sanitize_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut name: String = trimmed.chars().take(MAX_FILENAME_CHARS).collect();
    if name.is_empty() {
        name = "file".to_string();
    }
    name
}

/// Content types served as themselves; everything else is served as
/// `application/octet-stream`. Never HTML, SVG or script types.
const SAFE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/webm",
    "audio/mp4",
    "audio/flac",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "text/plain",
    "application/pdf",
];

const OCTET_STREAM: &str = "application/octet-stream";

/// The stored type of an upload: the client's declared type (or, failing
/// that, a guess from the extension) when it is on the safe list,
/// otherwise `application/octet-stream`. Images must also start with
/// their format's signature.
pub fn classify(declared: Option<&str>, filename: &str, head: &[u8]) -> String {
    let declared = declared
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != OCTET_STREAM);
    let guessed = guess_from_extension(filename);
    let candidate = declared.or(guessed.map(str::to_string));
    let Some(kind) = candidate.filter(|t| SAFE_TYPES.contains(&t.as_str())) else {
        return OCTET_STREAM.to_string();
    };
    let signature_ok = match kind.as_str() {
        "image/png" => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => head.starts_with(b"\xff\xd8\xff"),
        "image/gif" => head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a"),
        "image/webp" => head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP",
        "application/pdf" => head.starts_with(b"%PDF-"),
        _ => true,
    };
    if signature_ok { kind } else { OCTET_STREAM.to_string() }
}

fn guess_from_extension(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "m4a" => "audio/mp4",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "txt" | "log" | "md" => "text/plain",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// The `Content-Type` to serve a stored type with (re-checked against the
/// safe list, in case the database holds something older or odd).
pub fn safe_content_type(stored: &str) -> &'static str {
    match SAFE_TYPES.iter().find(|t| **t == stored) {
        Some(&"text/plain") => "text/plain; charset=utf-8",
        Some(t) => t,
        None => OCTET_STREAM,
    }
}

/// Whether a browser may show the type inline (images, audio, video).
pub fn is_inline(content_type: &str) -> bool {
    content_type.starts_with("image/") || content_type.starts_with("audio/") || content_type.starts_with("video/")
}

/// `Content-Disposition` for a download (RFC 6266): `inline` for media,
/// `attachment` otherwise, with an ASCII `filename` fallback and the exact
/// name as RFC 5987 `filename*`.
pub fn content_disposition(content_type: &str, filename: &str) -> String {
    let kind = if is_inline(content_type) { "inline" } else { "attachment" };
    let fallback: String = filename
        .chars()
        .map(|c| if (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%')) || c == ' ' { c } else { '_' })
        .collect();
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{}", rfc5987_encode(filename))
}

/// Percent-encodes everything but RFC 5987 `attr-char`.
fn rfc5987_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Records the files of a replicated message (inside the transaction that
/// inserts it). `Err(reason)` refuses the whole event: a file larger than
/// this node accepts, an empty one, or an attachment id already used.
pub async fn record_remote_files(
    tx: &mut PgConnection,
    actor: Uuid,
    scope: &Scope,
    files: &[FileRef],
    max_file_bytes: u64,
) -> Result<Result<(), &'static str>, sqlx::Error> {
    for file in files {
        if file.size == 0 || file.size > max_file_bytes {
            return Ok(Err("invalid_attachment"));
        }
        let filename = sanitize_filename(&file.filename);
        let content_type = if safe_content_type(&file.content_type) == "application/octet-stream" {
            "application/octet-stream"
        } else {
            file.content_type.as_str()
        };
        lock_hash(tx, &file.hash).await?;
        let inserted = sqlx::query(
            "INSERT INTO attachments (id, channel_id, uploader_id, message_id, filename, content_hash, file_size,
                                      mime_type)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(file.id)
        .bind(scope.channel)
        .bind(actor)
        .bind(scope.message)
        .bind(&filename)
        .bind(file.hash.as_slice())
        .bind(i64::try_from(file.size).unwrap_or(i64::MAX))
        .bind(content_type)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(Err("attachment_exists"));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\x\\evil.exe"), "evil.exe");
        assert_eq!(sanitize_filename("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(sanitize_filename(".hidden"), "hidden");
        assert_eq!(sanitize_filename("photo\u{202e}gpj.exe"), "photogpj.exe");
        assert_eq!(sanitize_filename(&"x".repeat(300)).chars().count(), 255);
    }

    #[test]
    fn only_safe_types_survive() {
        assert_eq!(classify(Some("text/html"), "a.html", b"<html>"), OCTET_STREAM);
        assert_eq!(classify(Some("image/svg+xml"), "a.svg", b"<svg"), OCTET_STREAM);
        assert_eq!(classify(None, "a.html", b"<html>"), OCTET_STREAM);
        assert_eq!(classify(Some("image/png"), "a.png", b"\x89PNG\r\n\x1a\n...."), "image/png");
        assert_eq!(classify(Some("image/png"), "a.png", b"<html>"), OCTET_STREAM);
        assert_eq!(classify(None, "notes.TXT", b"hello"), "text/plain");
        assert_eq!(classify(Some("Text/Plain; charset=utf-8"), "x", b"hello"), "text/plain");
        assert_eq!(safe_content_type("text/html"), OCTET_STREAM);
    }

    #[test]
    fn disposition_encodes_names() {
        assert_eq!(
            content_disposition("image/png", "cat.png"),
            "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
        );
        assert_eq!(
            content_disposition(OCTET_STREAM, "ré\"sumé.pdf"),
            "attachment; filename=\"r__sum_.pdf\"; filename*=UTF-8''r%C3%A9%22sum%C3%A9.pdf"
        );
    }
}
