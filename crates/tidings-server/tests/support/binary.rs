//! Starting the `tidings` binary for a test: on a port of its own, its logs
//! at `warn` on the test's stderr, killed when the test drops it.

use std::process::Stdio;

use anyhow::{Context as _, Result};
use tokio::process::{Child, Command};

use crate::common::{WAIT, listening_url};

/// Starts the binary listening on `listen` (`127.0.0.1:0`: a free port)
/// with `args`; the process and its `http://…` URL once it listens.
pub(crate) async fn start_on(listen: &str, args: &[&str]) -> Result<(Child, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["--listen", listen])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the tidings binary")?;
    let url = listening_url(&mut child, WAIT).await?;
    Ok((child, url))
}
