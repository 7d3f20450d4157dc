//! Request extractors whose rejections use the API's JSON error shape.
//!
//! axum's own `Json` and `Path` reject bad input with plain-text bodies;
//! these wrappers turn every such rejection into an [`ApiError`] so that a
//! client always gets `{"code", "message"}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// JSON body; malformed JSON, wrong types and missing fields are 400/415/413.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large("the request body is too large")
            } else {
                ApiError::bad_request("invalid_body", rejection.body_text())
            }
        })?;
        // No field of any request may carry NUL (see `crate::text`).
        if crate::text::json_has_nul(&bytes) {
            return Err(crate::text::InvalidField::nul().into());
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Whether the `Content-Type` is JSON: `application/json` or
/// `application/<something>+json`, with any parameters.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(err) => ApiError::bad_request("invalid_body", body_detail(&err.body_text())),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed_json", "the request body is not valid JSON"),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::payload_too_large("the request body is too large")
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// serde's message without axum's prefix, e.g. "missing field `name`".
fn body_detail(text: &str) -> String {
    text.rsplit_once(": ")
        .map(|(_, detail)| detail.to_string())
        .unwrap_or_else(|| text.to_string())
}

/// Path parameters; a malformed one (`/api/channels/abc`) is 400
/// `invalid_path`, naming the parameter and the value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                let raw = axum::extract::RawPathParams::from_request_parts(parts, state).await.ok();
                let params = raw
                    .iter()
                    .flat_map(|raw| raw.iter())
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect::<Vec<_>>();
                Err(invalid_path(&params, &err.into_kind()))
            }
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}

/// The 400 for a path parameter that does not parse: every parameter named
/// `id` or `*_id` is a UUID, so the first of those that is not one is the
/// culprit; otherwise axum's description of the failure.
fn invalid_path(params: &[(String, String)], kind: &axum::extract::path::ErrorKind) -> ApiError {
    use axum::extract::path::ErrorKind;
    let bad_id = params
        .iter()
        .find(|(key, value)| (key == "id" || key.ends_with("_id")) && uuid::Uuid::parse_str(value).is_err());
    let message = match (bad_id, kind) {
        (Some((key, value)), _) => format!("`{}` is not a valid {}", shorten(value), key.replace('_', " ")),
        (None, ErrorKind::ParseErrorAtKey { key, value, .. } | ErrorKind::DeserializeError { key, value, .. }) => {
            format!("`{}` is not a valid {}", shorten(value), key.replace('_', " "))
        }
        (None, ErrorKind::ParseErrorAtIndex { value, .. } | ErrorKind::ParseError { value, .. }) => {
            format!("`{}` is not valid in this path", shorten(value))
        }
        (None, ErrorKind::InvalidUtf8InPathParam { key }) => {
            format!("the {} in this path is not valid UTF-8", key.replace('_', " "))
        }
        (None, other) => format!("this path is not valid: {other}"),
    };
    ApiError::bad_request("invalid_path", message)
}

/// A value quoted back in an error, cut to a readable length.
fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        format!("{}…", value.chars().take(MAX).collect::<String>())
    }
}

/// Query string; bad values are 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(crate::text::query_has_nul) {
            return Err(crate::text::InvalidField::nul().into());
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|err: QueryRejection| ApiError::bad_request("invalid_query", body_detail(&err.body_text())))
    }
}

/// For fields that distinguish "absent" from `null`: use with
/// `#[serde(default, deserialize_with = "crate::extract::nullable")]` on an
/// `Option<Option<T>>`. Absent is `None` (leave as is), `null` is
/// `Some(None)` (clear), a value is `Some(Some(v))`.
pub fn nullable<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// A JSON body that may be left out: no body and no `Content-Type` gives
/// `T::default()`; anything else is read like [`Json`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return Json::<T>::from_request(req, state).await.map(|Json(v)| OptionalJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::payload_too_large("the request body is too large"))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(OptionalJson(T::default()))
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ))
        }
    }
}

/// Adds the 400 that [`Path`] answers for a malformed id to every
/// operation of `doc` with an id in its path (unless it documents a 400
/// already).
pub fn document_invalid_path(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    for item in doc.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let has_id = operation.parameters.iter().flatten().any(|param| {
                matches!(param, RefOr::T(p) if p.parameter_in == ParameterIn::Path && (p.name == "id" || p.name.ends_with("_id")))
            });
            if has_id {
                operation.responses.responses.entry("400".to_string()).or_insert_with(|| {
                    ResponseBuilder::new()
                        .description("An id in the path is malformed (`invalid_path`)")
                        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
                        .build()
                        .into()
                });
            }
        }
    }
}
