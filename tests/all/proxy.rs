//! A TCP proxy on loopback in front of a local server, to make the faults
//! of a real network: cut off (an outage) or slow (added latency).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Forwards to `upstream`. While cut, new connections are closed at once
/// and open ones are dropped, as a server gone away.
pub struct Proxy {
    pub endpoint: String,
    cut: watch::Sender<bool>,
}

impl Proxy {
    pub async fn to(upstream: &str) -> Proxy {
        Self::delaying(upstream, Duration::ZERO).await
    }

    /// Holds every chunk a client sends for `delay` before forwarding it:
    /// each request answers `delay` later.
    pub async fn delaying(upstream: &str, delay: Duration) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (cut, cutting) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *cutting.borrow() {
                    continue;
                }
                let (upstream, mut cutting) = (upstream.clone(), cutting.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        () = forward(inbound, outbound, delay) => {}
                        _ = cutting.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { endpoint, cut }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies both ways until either side closes, holding each chunk from the
/// client for `delay`.
async fn forward(inbound: TcpStream, outbound: TcpStream, delay: Duration) {
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let requests = async {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            tokio::time::sleep(delay).await;
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let answers = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        () = requests => {}
        _ = answers => {}
    }
}
