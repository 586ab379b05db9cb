//! A light HTTP/1.1 client for casting ballots under load: one kept-alive
//! connection per sender, on hyper's connection API, with the request
//! head built from a few pre-made parts. A general client (pooling, URL
//! parsing, redirects, JSON encoding per request) spent a fair share of
//! the two cores the benchmark shares with the system it measures.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One connection to the API, casting in one election.
pub struct BallotClient {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    path: String,
}

impl BallotClient {
    pub async fn connect(api: std::net::SocketAddr, election_id: i64) -> anyhow::Result<BallotClient> {
        let stream = TcpStream::connect(api).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs beside the requests; it ends when the
        // sender is dropped or the server hangs up.
        tokio::spawn(connection);
        Ok(BallotClient {
            sender,
            host: HeaderValue::from_str(&api.to_string())?,
            path: format!("/v1/elections/{election_id}/ballots"),
        })
    }

    /// Casts one ballot for `runner` with the voter's `token`; the answer's
    /// status, once its body is read (the connection is then reusable).
    pub async fn cast(&mut self, token: &str, runner: i64) -> anyhow::Result<StatusCode> {
        let body = Bytes::from(format!("{{\"selections\":[{runner}]}}"));
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }
}
