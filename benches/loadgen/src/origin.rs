//! `imgpipe-loadgen origin`: serves a folder's files over HTTP on a loopback address, as the
//! origin that GET benchmarks and the demo point image servers at (`/photo.jpg` → `DIR/photo.jpg`).
//!
//! tower-http's `ServeDir` does the serving (ranges, `Last-Modified`, `Content-Type`, no path
//! escapes out of the folder), on all of the runtime's threads, so a benchmark's origin is
//! never its bottleneck. Only loopback addresses are accepted: it serves files without any
//! authentication, and a benchmark must never reach beyond this machine.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use tower_http::services::ServeDir;

use crate::LoadgenError;

/// Options of `imgpipe-loadgen origin`.
#[derive(Debug, Clone, clap::Args)]
pub struct OriginArgs {
    /// Folder whose files are served, e.g. the benchmark photos.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to listen on; loopback only (127.0.0.0/8 or ::1).
    #[arg(long, default_value = "127.0.0.1:8070")]
    pub listen: SocketAddr,
}

/// The origin's routes: every path is a file of `dir`; a missing one is a 404.
pub fn app(dir: &Path) -> Router {
    Router::new().fallback_service(ServeDir::new(dir))
}

/// Refuses a listen address that is not loopback.
pub fn check_listen(listen: SocketAddr) -> Result<(), String> {
    if listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{listen} is not a loopback address: the origin serves files without authentication"
        ))
    }
}

/// Serves `args.dir` on `args.listen` until `shutdown` completes.
pub async fn serve(
    args: OriginArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoadgenError> {
    let error = |reason: String| LoadgenError::Origin {
        listen: args.listen.to_string(),
        reason,
    };
    check_listen(args.listen).map_err(error)?;
    if !args.dir.is_dir() {
        return Err(error(format!("{} is not a folder", args.dir.display())));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| error(e.to_string()))?;
    eprintln!(
        "origin: serving {} on http://{}",
        args.dir.display(),
        args.listen
    );
    axum::serve(listener, app(&args.dir))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn serves_the_folders_files_and_nothing_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("photo.jpg"), b"\xff\xd8jpeg bytes").unwrap();
        let get =
            |path: &str| app(dir.path()).oneshot(Request::get(path).body(Body::empty()).unwrap());

        let response = get("/photo.jpg").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "image/jpeg");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"\xff\xd8jpeg bytes");

        assert_eq!(
            get("/missing.jpg").await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/../etc/passwd").await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn listens_on_loopback_only() {
        for ok in ["127.0.0.1:8070", "127.8.9.10:1", "[::1]:8070"] {
            assert!(check_listen(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:8070", "192.168.1.2:8070", "[::]:8070"] {
            assert!(check_listen(refused.parse().unwrap()).is_err(), "{refused}");
        }
    }
}
