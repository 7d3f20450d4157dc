//! File uploads and downloads.
//!
//! `POST /api/channels/{channel_id}/attachments` streams one multipart
//! field named `file` to disk (see [`crate::uploads`]) and answers a
//! pending [`Attachment`]; sending a message with its id attaches it.
//! Downloads are served from disk in chunks, with headers that keep a
//! browser from running anything: a content type from a short safe list,
//! `nosniff`, a sandboxing CSP, and `Content-Disposition: attachment` for
//! anything that is not an image, audio or video.
//!
//! This router lifts the API's 64 KiB body limit; the upload handler
//! enforces `max_upload_bytes` itself while streaming.

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::perms::AccessError;
use crate::extract::{Json, Path};
use crate::messages::{ATTACHMENT_COLUMNS, AttachmentRow};
use crate::model::{Attachment, ChannelKind};
use crate::state::AppState;
use crate::uploads::{self, FileStore};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_attachment))
        .routes(routes!(download_attachment))
        .layer(DefaultBodyLimit::disable())
}

/// The multipart form of an upload (for the API description).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file; its name and type come from the part's headers.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// Bytes of other form fields tolerated before the `file` field.
const MAX_OTHER_FIELD_BYTES: usize = 64 * 1024;

fn unknown_attachment() -> ApiError {
    ApiError::not_found("unknown_attachment", "no such attachment")
}

/// `POST /api/channels/{channel_id}/attachments`: upload a file (multipart
/// field `file`) for a message not sent yet. Unused uploads are removed
/// after 24 hours. Each user may hold a limited number and size of uploads
/// not yet sent (413 `upload_quota_exceeded`); while the node is short of
/// disk space, uploads are refused (507 `insufficient_storage`).
#[utoipa::path(post, path = "/api/channels/{channel_id}/attachments", tag = "attachments", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, body = Attachment), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn upload_attachment(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let access = state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    if access.kind != ChannelKind::Text {
        return Err(ApiError::bad_request(
            "invalid_channel_type",
            "files can only be attached in text channels",
        ));
    }
    access.require(Permissions::ATTACH_FILES)?;
    let mut multipart = multipart.map_err(|err| {
        ApiError::bad_request("invalid_upload", format!("send the file as multipart/form-data: {}", err.body_text()))
    })?;
    let bad_form = |err: axum::extract::multipart::MultipartError| {
        ApiError::bad_request("invalid_upload", format!("the multipart body is malformed: {}", err.body_text()))
    };

    let store = FileStore::new(&state.config.data_dir);
    let limits = &state.config.limits;
    store.ensure_free_space(limits.min_free_disk_bytes).await?;
    let quota = uploads::PendingQuota::from_limits(limits);
    let room = quota.room(&state.db, auth.user_id).await?;
    let max_bytes = state.config.max_upload_bytes.min(room);
    let mut other_bytes = 0usize;
    loop {
        let Some(mut field) = multipart.next_field().await.map_err(bad_form)? else {
            return Err(ApiError::bad_request(
                "invalid_upload",
                "send the file in a multipart field named `file`",
            ));
        };
        if field.name() != Some("file") {
            while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
                other_bytes += chunk.len();
                if other_bytes > MAX_OTHER_FIELD_BYTES {
                    return Err(ApiError::bad_request("invalid_upload", "form fields other than `file` are too large"));
                }
            }
            continue;
        }
        let filename = uploads::sanitize_filename(field.file_name().unwrap_or("file"));
        let declared = field.content_type().map(str::to_string);
        let staged = store.stage(&mut field, max_bytes).await.map_err(|err| match err {
            uploads::StageError::TooLarge(_) if max_bytes < state.config.max_upload_bytes => ApiError::from(quota.bytes_exceeded()),
            other => other.into(),
        })?;
        if let Err(err) = store.ensure_free_space(limits.min_free_disk_bytes).await {
            store.discard(&staged).await;
            return Err(err.into());
        }
        let mime_type = uploads::classify(declared.as_deref(), &filename, &staged.head);
        let upload = Upload { channel_id, uploader_id: auth.user_id, filename: &filename, mime_type: &mime_type };
        let recorded = record_upload(&state, &store, &staged, &upload, quota).await;
        return match recorded {
            Ok(row) => Ok((StatusCode::CREATED, Json(row.to_model()))),
            Err(err) => {
                store.discard(&staged).await;
                Err(err)
            }
        };
    }
}

/// What an upload is recorded as.
struct Upload<'a> {
    channel_id: Uuid,
    uploader_id: Uuid,
    filename: &'a str,
    mime_type: &'a str,
}

/// Records a staged upload, checking the uploader's pending quota again
/// under a lock on their row, so concurrent uploads cannot pass it together.
async fn record_upload(
    state: &AppState,
    store: &FileStore,
    staged: &uploads::StagedFile,
    upload: &Upload<'_>,
    quota: uploads::PendingQuota,
) -> ApiResult<AttachmentRow> {
    let Upload { channel_id, uploader_id, filename, mime_type } = *upload;
    let mut tx = state.db.begin().await?;
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(uploader_id)
        .execute(&mut *tx)
        .await?;
    let room = quota.room(&mut *tx, uploader_id).await?;
    if staged.size > room {
        return Err(quota.bytes_exceeded().into());
    }
    uploads::lock_hash(&mut tx, &staged.hash).await?;
    let sql = format!(
        "INSERT INTO attachments (id, channel_id, uploader_id, filename, content_hash, file_size, mime_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ATTACHMENT_COLUMNS}"
    );
    let row: AttachmentRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(channel_id)
        .bind(uploader_id)
        .bind(filename)
        .bind(staged.hash.as_slice())
        .bind(staged.size as i64)
        .bind(mime_type)
        .fetch_one(&mut *tx)
        .await?;
    store.commit(staged).await.map_err(ApiError::internal)?;
    tx.commit().await?;
    Ok(row)
}

/// `GET /api/attachments/{attachment_id}`: download a file. Needs access to
/// the message's channel (READ_MESSAGE_HISTORY); an upload not yet sent is
/// visible to its uploader only.
#[utoipa::path(get, path = "/api/attachments/{attachment_id}", tag = "attachments", security(("bearer" = [])),
    params(("attachment_id" = Uuid, Path)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_attachment(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(attachment_id): Path<Uuid>,
) -> ApiResult<Response> {
    let sql = format!("SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE id = $1");
    let row: AttachmentRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(attachment_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(unknown_attachment)?;
    match row.message_id {
        None if row.uploader_id != auth.user_id => return Err(unknown_attachment()),
        None => {}
        Some(_) => {
            let access = state.caches.perms.channel_access(&state.db, auth.user_id, row.channel_id)
                .await
                .map_err(|err| match err {
                    AccessError::UnknownChannel => unknown_attachment(),
                    other => other.into(),
                })?;
            access.require(Permissions::READ_MESSAGE_HISTORY)?;
        }
    }

    if row.message_id.is_some() {
        // A file of a message from another node is fetched on first download.
        crate::federation::blobs::ensure_local(&state, &row).await.map_err(|err| {
            ApiError::new(StatusCode::BAD_GATEWAY, "file_unavailable", format!("the file could not be fetched: {err}"))
        })?;
    }
    let path = FileStore::new(&state.config.data_dir).path_for(&row.content_hash);
    let file = tokio::fs::File::open(&path).await.map_err(|err| {
        ApiError::internal(format!("attachment {} file {}: {err}", row.id, path.display()))
    })?;
    let content_type = uploads::safe_content_type(&row.mime_type);
    let disposition = uploads::content_disposition(content_type, &row.filename);

    let mut response = Response::new(Body::from_stream(file_chunks(file)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(row.file_size as u64));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// A file as a stream of chunks of up to 64 KiB; ends after an error.
fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(err) => Some((Err(err), None)),
        }
    })
    .boxed()
}
