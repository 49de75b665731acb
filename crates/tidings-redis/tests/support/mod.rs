//! A real `redis-server` for tests: started on a free port, gone when the
//! test process ends (its wrapper shell kills it when stdin closes).

#![allow(dead_code)]

pub(crate) mod cluster;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tidings::{LifetimeManager, SerializedMessage, Target, testing::TestConnection};
use tidings_redis::RedisBackplane;

/// Two servers of one hub: `sender` (server one) with a `local`
/// connection, and server two with a `remote` one.
pub(crate) struct Pair {
    pub sender: Arc<dyn LifetimeManager>,
    /// Server two's manager: held, since dropping it ends the hub there.
    pub receiver: Arc<dyn LifetimeManager>,
    pub local: TestConnection,
    pub remote: TestConnection,
}

/// Connects a client to each server, then waits until both servers know
/// each other (before a test breaks something).
pub(crate) async fn pair(one: &RedisBackplane, two: &RedisBackplane) -> Pair {
    let sender = one.lifetime_manager("Faults.Hub");
    let receiver = two.lifetime_manager("Faults.Hub");
    let local = TestConnection::new("local", None);
    let remote = TestConnection::new("remote", None);
    sender.on_connected(local.handle()).await;
    receiver.on_connected(remote.handle()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Pair {
        sender,
        receiver,
        local,
        remote,
    }
}

/// Sends `N(n)` to every connection through `manager`.
pub(crate) async fn broadcast(manager: &Arc<dyn LifetimeManager>, n: u64) {
    let message = SerializedMessage::invocation("N", (n,));
    manager
        .send(&Target::All, Arc::new(message))
        .await
        .expect("send never fails for lack of Redis");
}

/// The numbers of the `N(n)` messages `connection` receives until `last`,
/// or until nothing arrives for `patience`.
pub(crate) async fn numbers_until(
    connection: &mut TestConnection,
    last: u64,
    patience: Duration,
) -> Vec<u64> {
    let mut seen = Vec::new();
    while let Some(received) = connection.next_within(patience).await {
        let n = received.arguments[0].as_u64().expect("a number");
        seen.push(n);
        if n == last {
            break;
        }
    }
    seen
}

/// Runs `script` under `sh`, which starts a server in the background,
/// prints its pid and then waits on stdin; closing stdin (dropping the
/// returned handle) makes the script kill the server.
fn spawn_wrapped(script: &str) -> (Child, ChildStdin, u32) {
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)");
    let stdin = wrapper.stdin.take().expect("stdin");
    let mut line = String::new();
    BufReader::new(wrapper.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("pid");
    let pid = line.trim().parse().expect("pid");
    (wrapper, stdin, pid)
}

/// One `redis-server` process on a port of its own.
#[derive(Debug)]
pub(crate) struct RedisServer {
    port: u16,
    process: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    wrapper: Child,
    /// Closing it (dropping) makes the wrapper kill the server.
    _stdin: ChildStdin,
    pid: u32,
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl RedisServer {
    /// Starts a server without persistence on a free port.
    pub(crate) fn start() -> Self {
        let server = RedisServer {
            port: free_port(),
            process: Mutex::new(None),
        };
        server.restart();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port.
    pub(crate) fn restart(&self) {
        let script = format!(
            "redis-server --port {} --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null & pid=$!; echo $pid; read _; kill -9 $pid",
            self.port
        );
        let (wrapper, stdin, pid) = spawn_wrapped(&script);
        *self.process.lock().expect("lock") = Some(Running {
            wrapper,
            _stdin: stdin,
            pid,
        });
        self.wait_ready();
    }

    /// Kills the server at once (SIGKILL): connections drop, data is lost.
    pub(crate) fn kill(&self) {
        if let Some(mut running) = self.process.lock().expect("lock").take() {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(running.pid.to_string())
                .status();
            drop(running._stdin);
            let _ = running.wrapper.wait();
        }
        // Wait until the port is free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
