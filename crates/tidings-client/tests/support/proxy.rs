//! A TCP proxy for tests whose connections can be cut: both sockets of every open connection
//! close at once, as when a network path fails, while the proxy keeps accepting new ones.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub(crate) struct Proxy {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub url: String,
    /// `host:port` new connections go to.
    target: Arc<Mutex<String>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Forwards to the `http://host:port` of `upstream`.
    pub(crate) async fn start(upstream: &str) -> std::io::Result<Proxy> {
        let target = Arc::new(Mutex::new(
            upstream.trim_start_matches("http://").to_owned(),
        ));
        let upstream = Arc::clone(&target);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = upstream.lock().clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                registry.lock().push(pipe);
            }
        });
        Ok(Proxy {
            url,
            target,
            connections,
            accept,
        })
    }

    /// Sends new connections to `upstream` (`http://host:port`) from now
    /// on, as a load balancer does once a server leaves its rotation; open
    /// connections stay where they are.
    #[allow(dead_code)]
    pub(crate) fn retarget(&self, upstream: &str) {
        *self.target.lock() = upstream.trim_start_matches("http://").to_owned();
    }

    /// Drops every open connection.
    pub(crate) fn cut(&self) {
        for pipe in self.connections.lock().drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
