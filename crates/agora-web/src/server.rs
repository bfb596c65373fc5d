//! The server around the endpoints: its configuration, the router (bearer-token check,
//! body-size limit, JSON 404s), and a listener with graceful shutdown.
//!
//! Admission: at most `max_concurrent_requests` generation requests run at once (a stream
//! counts until it ends); one more is answered 503 with `Retry-After: 1` at once rather
//! than queued. The backend does the queueing and batching of the requests it is given,
//! so the server never serialises them; the limit only bounds memory and keeps a flood
//! from hiding behind an unbounded queue (clients such as openai-python retry 503s).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use agora_llm::Backend;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{self, AppState};
use crate::error::{ApiError, ServeError};

/// How `agora serve` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Where to listen; port 0 picks a free port ([`BoundServer::local_addr`] says which).
    pub bind: SocketAddr,
    /// When set, every `/v1` request must carry `Authorization: Bearer <token>`.
    /// `/health` stays open (for process supervisors).
    pub token: Option<String>,
    /// Largest request body; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for; more gets 400. Also the default
    /// `max_tokens` of chat requests that give none.
    pub max_tokens_limit: usize,
    /// Generation requests running at once; one more gets 503.
    pub max_concurrent_requests: usize,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8000)),
            token: None,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            max_concurrent_requests: 256,
        }
    }
}

/// The API as a router, without a listener (tests call it directly).
pub fn router(backend: Arc<dyn Backend>, config: &ServeConfig) -> Router {
    let state = AppState {
        backend,
        max_body_bytes: config.max_body_bytes,
        max_tokens_limit: config.max_tokens_limit,
        max_concurrent_requests: config.max_concurrent_requests,
        slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        started: api::unix_seconds(),
    };
    let token: Option<Arc<[u8]>> = config.token.as_deref().map(|token| Arc::from(token.as_bytes()));
    let v1 = Router::new()
        .route("/v1/models", get(api::list_models))
        .route("/v1/models/{*model_id}", get(api::retrieve_model))
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/v1/completions", post(api::completions))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/health", get(api::health))
        .merge(v1)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

async fn require_token(State(token): State<Option<Arc<[u8]>>>, request: Request, next: Next) -> Response {
    if let Some(expected) = token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|given| constant_time_equal(given.as_bytes(), &expected)) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guessed token was right. (It does reveal the expected token's length.)
fn constant_time_equal(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, expected_byte) in expected.iter().enumerate() {
        let given_byte = given.get(index).copied().unwrap_or(0);
        difference |= given_byte ^ expected_byte;
    }
    std::hint::black_box(difference) == 0
}

/// A server listening on its address, not yet answering.
#[derive(Debug)]
pub struct BoundServer {
    listener: TcpListener,
    address: SocketAddr,
    router: Router,
}

impl BoundServer {
    /// The address actually bound (the port chosen when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Answers requests until `shutdown` completes, then stops accepting connections and
    /// returns once the requests in flight (streams included) have finished.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let address = self.address;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServeError::Serve { address, source })
    }
}

/// Opens the listener of `config.bind` for `backend`.
pub async fn bind(backend: Arc<dyn Backend>, config: &ServeConfig) -> Result<BoundServer, ServeError> {
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServeError::Bind { address: config.bind, source })?;
    let address =
        listener.local_addr().map_err(|source| ServeError::Bind { address: config.bind, source })?;
    Ok(BoundServer { listener, address, router: router(backend, config) })
}

/// Binds, prints `agora serve: listening on http://ADDRESS/v1 (model NAME)` on stdout, and
/// serves until `shutdown` completes (graceful, see [`BoundServer::run`]).
pub async fn serve(
    backend: Arc<dyn Backend>,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let model = backend.info().model.clone();
    let server = bind(backend, config).await?;
    println!("agora serve: listening on http://{}/v1 (model {model})", server.local_addr());
    server.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_equal(b"secret", b"secret"));
        assert!(!constant_time_equal(b"secreT", b"secret"));
        assert!(!constant_time_equal(b"secret-and-more", b"secret"));
        assert!(!constant_time_equal(b"secre", b"secret"));
        assert!(!constant_time_equal(b"", b"secret"));
    }

    #[test]
    fn default_bind_is_loopback() {
        let config = ServeConfig::default();
        assert!(config.bind.ip().is_loopback());
        assert_eq!(
            (config.bind.port(), config.max_body_bytes, config.max_tokens_limit),
            (8000, 1 << 20, 4096)
        );
    }
}
