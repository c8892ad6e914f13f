//! A one-page web server for browser tests: answers every GET with the same
//! HTML and records each request's path and query (an attacker's site that
//! auto-submits a form, or an app's `return_to` page).

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
pub struct PageServer {
    /// `http://host:port` as given to `start`.
    pub origin: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl PageServer {
    /// Serves `html` on 127.0.0.1; `host` names it in [`Self::origin`]
    /// (`localhost` makes it another site than `127.0.0.1` to a browser).
    pub async fn start(host: &str, html: String) -> PageServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind page server");
        let port = listener.local_addr().expect("addr").port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = requests.clone();
        let html = Arc::new(html);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let recorded = recorded.clone();
                let html = html.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    if let Some(target) = text.split_whitespace().nth(1) {
                        recorded.lock().expect("requests").push(target.to_owned());
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        PageServer {
            origin: format!("http://{host}:{port}"),
            requests,
        }
    }

    /// Request targets (path and query) in the order they came.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}
