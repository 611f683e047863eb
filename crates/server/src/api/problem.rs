//! RFC 9457 problem details. Every error the API returns is one of these,
//! with a stable `type` clients can match on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, `urn:ignis:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:ignis:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, slug, "Bad request", detail)
    }

    pub fn unprocessable(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            "Invalid job",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    pub fn too_many(detail: impl Into<String>, retry_after: u64) -> Problem {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                detail,
            )
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl Problem {
    /// 503: nothing was done; the same request may succeed later.
    pub fn unavailable(slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            retry_after: Some(1),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, title, detail)
        }
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        Problem::from(crate::service::ServiceError::from(e))
    }
}

/// The one translation of the service's answers into HTTP.
impl From<crate::service::ServiceError> for Problem {
    fn from(e: crate::service::ServiceError) -> Problem {
        use crate::service::ServiceError as E;
        let detail = e.to_string();
        match e {
            E::Draining => Problem::unavailable(
                "shutting-down",
                "Shutting down",
                "the server is shutting down and takes no new jobs",
            ),
            E::UnknownLanguage { .. } => Problem::unprocessable("unknown-language", detail),
            E::TooManyQueued { .. } => Problem::too_many(detail, 1),
            E::NotFound(_) => Problem::not_found(detail),
            E::Finished { .. } => Problem::new(
                StatusCode::CONFLICT,
                "job-finished",
                "Job already finished",
                detail,
            ),
            E::QueueFull(_) => Problem::unavailable(
                "queue-full",
                "Queue full",
                "the job queue is at its limit; the job was not accepted, try again later",
            ),
            E::Unavailable(m) => {
                tracing::warn!("unavailable: {m}");
                Problem::unavailable(
                    "unavailable",
                    "Service unavailable",
                    format!(
                        "{}; nothing was changed, try again later",
                        crate::redact::host_paths(&m)
                    ),
                )
            }
            E::Internal(m) => {
                tracing::error!("{m}");
                Problem::internal("the server failed; try again")
            }
        }
    }
}
