//! `tally health`: one `/readyz` request to the local admin listener, for
//! container health checks that have no HTTP client of their own.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ready when the listener at `addr` answers `/readyz` with 200 within a
/// few seconds.
pub async fn probe_ready(addr: &str) -> anyhow::Result<()> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line is all that matters; the body may be left unread.
        let mut head = [0u8; 16];
        let mut read = 0;
        while read < head.len() {
            match stream.read(&mut head[read..]).await? {
                0 => break,
                n => read += n,
            }
        }
        anyhow::Ok(head[..read].to_vec())
    };
    let head = tokio::time::timeout(Duration::from_secs(3), ask).await??;
    anyhow::ensure!(head.starts_with(b"HTTP/1.1 200 ") || head.starts_with(b"HTTP/1.0 200 "), "not ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn answering(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request).await;
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let _ = socket.write_all(answer.as_bytes()).await;
        });
        addr
    }

    #[tokio::test]
    async fn only_a_200_is_ready() {
        assert!(super::probe_ready(&answering("200 OK").await).await.is_ok());
        assert!(super::probe_ready(&answering("503 Service Unavailable").await).await.is_err());
    }
}
