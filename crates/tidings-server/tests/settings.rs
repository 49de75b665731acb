//! The standalone server's settings as a user meets them: the layers'
//! precedence (flags > environment > file > defaults), seen through
//! `tidings check-config --print`, and the test hub, which is served only
//! with `--test-hub`; and that text logs written to a pipe are plain text.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, bail};

/// `tidings <flags> --config <file> check-config --print` with `env`, as JSON.
fn resolved(toml: &str, env: &[(&str, &str)], flags: &[&str]) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tidings.toml");
    std::fs::write(&path, toml)?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    // Only the variables of the test reach the server.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("TIDINGS_")) {
        command.env_remove(name);
    }
    let output = command
        .args(flags)
        .arg("--config")
        .arg(&path)
        .args(["check-config", "--print"])
        .envs(env.iter().copied())
        .output()?;
    if !output.status.success() {
        bail!(
            "check-config failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let json = stdout
        .split_once('\n')
        .map(|(_, json)| json)
        .context("no settings after the OK line")?;
    Ok(serde_json::from_str(json)?)
}

#[test]
fn flags_win_over_the_environment_over_the_file_over_the_defaults() -> anyhow::Result<()> {
    let toml = r#"
        [limits]
        keep_alive = "5s"
        client_timeout = "6s"
        handshake_timeout = "7s"
        outbound_buffer = 5
        stream_buffer_capacity = 3
    "#;
    let settings = resolved(
        toml,
        &[
            ("TIDINGS_KEEP_ALIVE_MS", "1000"),
            ("TIDINGS_CLIENT_TIMEOUT_MS", "2000"),
            ("TIDINGS_LIMITS__OUTBOUND_BUFFER", "7"),
            // The flag's own variable wins over the nested one.
            ("TIDINGS_LIMITS__STREAM_BUFFER_CAPACITY", "4"),
            ("TIDINGS_STREAM_BUFFER_CAPACITY", "8"),
        ],
        &["--keep-alive-ms", "300"],
    )?;
    let limits = &settings["limits"];
    // flag > flag's variable > file
    assert_eq!(limits["keep_alive"], 300);
    // flag's variable > file
    assert_eq!(limits["client_timeout"], 2000);
    // nested variable > file
    assert_eq!(limits["outbound_buffer"], 7);
    // flag's variable > nested variable > file
    assert_eq!(limits["stream_buffer_capacity"], 8);
    // file > default
    assert_eq!(limits["handshake_timeout"], 7000);
    // default: the library's (HubOptions::DEFAULT_DISCONNECT_TIMEOUT)
    assert_eq!(limits["disconnect_timeout"], 15_000);
    assert_eq!(settings["server"]["test_hub"], false);
    Ok(())
}

#[test]
fn secrets_are_not_printed() -> anyhow::Result<()> {
    let settings = resolved(
        "[auth]\naccess_keys = [\"a-secret-access-key-0123\"]\njwt_secret = \"a-jwt-secret\"",
        &[],
        &[],
    )?;
    let text = settings.to_string();
    assert!(
        !text.contains("a-secret-access-key-0123") && !text.contains("a-jwt-secret"),
        "{text}"
    );
    assert_eq!(
        settings["auth"]["access_keys"].as_array().map(Vec::len),
        Some(1)
    );
    Ok(())
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(extra: &[&str]) -> anyhow::Result<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("TIDINGS_TEST_HUB")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(address) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            bail!("unexpected first line: {line:?}");
        };
        let address = address.to_owned();
        Ok(Server { child, address })
    }

    /// The status code of an empty POST to `path`.
    fn post(&self, path: &str) -> anyhow::Result<u16> {
        let mut stream = TcpStream::connect(&self.address)?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        response
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_test_hub_is_served_only_with_its_flag() -> anyhow::Result<()> {
    let negotiate = "/hubs/test/negotiate?negotiateVersion=1";
    let plain = Server::start(&[])?;
    assert_eq!(plain.post(negotiate)?, 404);
    assert_eq!(plain.post("/hubs/chat/negotiate?negotiateVersion=1")?, 200);
    let with = Server::start(&["--test-hub"])?;
    assert_eq!(with.post(negotiate)?, 200);
    Ok(())
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() -> anyhow::Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("TIDINGS_TEST_HUB")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let done = line.starts_with("listening on ");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("INFO")),
        "no log line before the address: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "escape codes in a piped log: {lines:?}"
    );
    Ok(())
}
