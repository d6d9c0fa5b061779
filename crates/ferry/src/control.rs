//! The control socket of a running `ferry run` (`<state-dir>/control.sock`, mode 0600):
//! newline-delimited JSON requests and event streams, as `proto/admin-api.md` specifies.
//! Only commands that change things live here; the TCP endpoint is read-only.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Cutover {
        #[serde(default)]
        full: bool,
        #[serde(default = "default_max_lag")]
        max_lag_records: u64,
        #[serde(default = "default_lag_wait")]
        lag_wait_seconds: f64,
    },
    /// Sent by the cutover client after it ran the switch command.
    Switched {
        ok: bool,
        #[serde(default)]
        output: String,
    },
    BackupNow,
}

fn default_max_lag() -> u64 {
    1000
}
fn default_lag_wait() -> f64 {
    60.0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Step {
        step: String,
        message: String,
    },
    Switch {
        message: String,
    },
    Done {
        #[serde(flatten)]
        detail: serde_json::Map<String, Json>,
    },
    Error {
        message: String,
        fence_released: bool,
    },
}

/// One connection, seen from the server: read the next request, send events.
pub struct Conversation {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Conversation {
    /// The next request; `Ok(None)` when the client hung up.
    pub async fn next_request(&mut self) -> std::io::Result<Option<Request>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        serde_json::from_str(line.trim()).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad request {line:?}: {e}"),
            )
        })
    }

    pub async fn send(&mut self, event: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        self.writer.flush().await
    }
}

/// Binds the control socket with mode 0600 (a stale socket file from a killed process is
/// replaced; a live one means another ferry runs here).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: another ferry is running with this state directory",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    // Create it private from the start: no window in which others could connect.
    // SAFETY: umask is process-wide but we restore it right after bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener =
        bound.map_err(|e| anyhow::anyhow!("binding the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn accept(listener: &UnixListener) -> std::io::Result<Conversation> {
    let (stream, _) = listener.accept().await?;
    let (r, w) = stream.into_split();
    Ok(Conversation {
        reader: BufReader::new(r),
        writer: w,
    })
}

/// The client side.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> anyhow::Result<Client> {
        let s = UnixStream::connect(path).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach a running `ferry run` at {}: {e} (is it running with this --state-dir, as this user?)",
                path.display()
            )
        })?;
        let (r, w) = s.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    pub async fn send(&mut self, req: &Request) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// The next event; `None` when the server closed the connection.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(line.trim())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_speaks_json_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("control.sock");
        let listener = bind(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second bind while the first listens is refused.
        assert!(bind(&p).unwrap_err().to_string().contains("another ferry"));
        let server = tokio::spawn(async move {
            // The liveness probe of the refused bind above is a connection that hangs up
            // without a request; a server skips those.
            let (mut c, req) = loop {
                let mut c = accept(&listener).await.unwrap();
                if let Some(req) = c.next_request().await.unwrap() {
                    break (c, req);
                }
            };
            assert!(matches!(
                req,
                Request::Cutover {
                    full: true,
                    max_lag_records: 1000,
                    ..
                }
            ));
            c.send(&Event::Switch {
                message: "go".into(),
            })
            .await
            .unwrap();
            let req = c.next_request().await.unwrap().unwrap();
            assert_eq!(
                req,
                Request::Switched {
                    ok: true,
                    output: "x".into()
                }
            );
            assert!(c.next_request().await.unwrap().is_none());
        });
        let mut client = Client::connect(&p).await.unwrap();
        client
            .send(&Request::Cutover {
                full: true,
                max_lag_records: 1000,
                lag_wait_seconds: 1.0,
            })
            .await
            .unwrap();
        assert_eq!(
            client.next_event().await.unwrap(),
            Some(Event::Switch {
                message: "go".into()
            })
        );
        client
            .send(&Request::Switched {
                ok: true,
                output: "x".into(),
            })
            .await
            .unwrap();
        drop(client);
        server.await.unwrap();
        let wire = serde_json::to_string(&Request::BackupNow).unwrap();
        assert_eq!(wire, r#"{"command":"backup_now"}"#);
    }
}
