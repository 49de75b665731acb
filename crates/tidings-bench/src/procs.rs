//! The processes a benchmark starts besides its workers: servers under test
//! and a `redis-server` of its own. Every child is killed when its handle is
//! dropped, so an error or an interrupted run leaves nothing behind.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::conn::ServerKind;

/// A command that runs `program` with its soft open-files limit raised to
/// the hard limit: a process holding ~20 000 sockets needs all of it, and
/// raising it through a shell keeps this crate free of `unsafe` syscalls.
pub(crate) fn with_max_files(program: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" && exec "$0" "$@""#)
        .arg(program);
    command
}

/// A server process started for one scenario.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    pub address: SocketAddr,
    pub pid: u32,
}

impl Server {
    pub(crate) async fn start(
        binary: &Path,
        kind: ServerKind,
        extra: &[String],
    ) -> anyhow::Result<Server> {
        let mut command = with_max_files(binary);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if kind == ServerKind::Tidings {
            // Only WebSockets are measured; keep-alive as shipped. The
            // scenarios use the test hub, which is served only when asked for.
            command.args(["--transports", "WebSockets", "--test-hub"]);
        }
        if kind == ServerKind::RawTws {
            command.args(["--codec", "tokio-websockets"]);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        // `exec` keeps the shell's pid, so this is the server's own.
        let pid = child.id().context("server pid")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                    return Ok(rest.parse::<SocketAddr>()?);
                }
            }
            bail!("{} ended before listening", binary.display())
        })
        .await
        .context("the server did not start listening within 10 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            address,
            pid,
        })
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A `redis-server` of our own on a free port.
#[derive(Debug)]
pub(crate) struct Redis {
    child: Child,
    pub url: String,
    pub pid: u32,
}

impl Redis {
    pub(crate) async fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = with_max_files(Path::new("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server (is it installed?)")?;
        let pid = child.id().context("redis-server pid")?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = async {
            loop {
                if tokio::net::TcpStream::connect(address).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .context("redis-server did not accept connections within 10 s")?;
        Ok(Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            pid,
        })
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
