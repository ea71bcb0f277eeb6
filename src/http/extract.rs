//! axum's extractors with every rejection answered as a Kubernetes `Status` (issue 28): a bad
//! path parameter, query string, JSON or form body, a body too large, a path or method no
//! route serves. The handlers import these in place of axum's own.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use serde::de::DeserializeOwned;

use super::api::ApiError;

/// A rejection of axum's, as a `Status` with its code and its text.
fn rejected(code: StatusCode, text: String) -> ApiError {
    ApiError::Rejected(code, text)
}

/// [`axum::extract::Path`], rejections as a `Status`.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|r: PathRejection| rejected(r.status(), r.body_text()))
    }
}

/// [`axum::extract::Query`], rejections as a `Status`.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|r: QueryRejection| rejected(r.status(), r.body_text()))
    }
}

/// [`axum::Form`], rejections as a `Status`.
pub struct Form<T>(pub T);

impl<T, S> FromRequest<S> for Form<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Form::<T>::from_request(req, state)
            .await
            .map(|axum::Form(v)| Form(v))
            .map_err(|r: FormRejection| rejected(r.status(), r.body_text()))
    }
}

/// A JSON request body ([`axum::Json`]), rejections as a `Status`; optional when the request
/// has no JSON content type.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        <axum::Json<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(|axum::Json(v)| JsonBody(v))
            .map_err(|r: JsonRejection| rejected(r.status(), r.body_text()))
    }
}

impl<T, S> OptionalFromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        <axum::Json<T> as OptionalFromRequest<S>>::from_request(req, state)
            .await
            .map(|v| v.map(|axum::Json(v)| JsonBody(v)))
            .map_err(|r: JsonRejection| rejected(r.status(), r.body_text()))
    }
}

/// What no route serves (a path with `..` among them: paths are matched as sent).
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("nothing is served at {method} {}", uri.path()))
}

/// A path served, not with this method.
pub async fn no_method(method: Method, uri: Uri) -> ApiError {
    rejected(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not answer {method}", uri.path()),
    )
}
