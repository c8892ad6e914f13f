//! A tiny webhook receiver for the end-to-end tests: plain HTTP/1.1 over a
//! tokio listener, records every delivery (headers and raw body), answers
//! 500 to the first `fail_first` requests and 200 after that, or, while
//! hanging, never answers. Signatures are
//! verified with an HMAC-SHA256 written here from RFC 2104 on `sha2`, apart
//! from the service's own implementation.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug)]
pub struct Delivery {
    /// Lowercase header names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    fail_first: Arc<AtomicUsize>,
    hanging: Arc<AtomicBool>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!(
            "http://{}/hooks/authstamp",
            listener.local_addr().expect("addr")
        );
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let recorded = deliveries.clone();
        let fail_first = Arc::new(AtomicUsize::new(fail_first));
        let hanging = Arc::new(AtomicBool::new(false));
        let (failing, hangs) = (fail_first.clone(), hanging.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let recorded = recorded.clone();
                let (failing, hangs) = (failing.clone(), hangs.clone());
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut socket).await else {
                        return;
                    };
                    let hang = hangs.load(Ordering::SeqCst);
                    let status = {
                        let mut all = recorded.lock().expect("lock");
                        let status = if hang {
                            0
                        } else if all.len() < failing.load(Ordering::SeqCst) {
                            500
                        } else {
                            200
                        };
                        all.push(Delivery {
                            headers,
                            body,
                            status,
                        });
                        status
                    };
                    if hang {
                        // Holds the connection open, answering nothing.
                        std::future::pending::<()>().await;
                    }
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        Receiver {
            url,
            deliveries,
            fail_first,
            hanging,
        }
    }

    /// From now on the first `n` requests in all are answered 500.
    pub fn set_fail_first(&self, n: usize) {
        self.fail_first.store(n, Ordering::SeqCst);
    }

    /// While set, requests are recorded (status 0) and never answered.
    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("lock").clone()
    }

    /// Waits until a delivery satisfies `pred` (at most 15 s).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Delivery) -> bool) -> Delivery {
        self.wait_for_within(what, std::time::Duration::from_secs(15), pred)
            .await
    }

    /// [`Self::wait_for`] with the limit given.
    pub async fn wait_for_within(
        &self,
        what: &str,
        limit: std::time::Duration,
        pred: impl Fn(&Delivery) -> bool,
    ) -> Delivery {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(d) = self.deliveries().into_iter().find(|d| pred(d)) {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no webhook delivery {what}; got {:?}",
                self.deliveries()
                    .iter()
                    .map(|d| String::from_utf8_lossy(&d.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

async fn read_request(
    socket: &mut tokio::net::TcpStream,
) -> Option<(BTreeMap<String, String>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    while buffer.len() < header_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some((headers, buffer[header_end..header_end + length].to_vec()))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Checks `x-authstamp-signature: t=<t>,v1=<hex>` over the raw body.
pub fn signature_valid(secret: &str, delivery: &Delivery) -> bool {
    let Some(header) = delivery.headers.get("x-authstamp-signature") else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&delivery.body);
    let expected: String = hmac_sha256(secret.as_bytes(), &message)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
