//! Responses tproxy writes itself (errors a user can act on).

use tokio::io::AsyncWriteExt;

use crate::net::stream::ClientIo;

/// Standard reason phrase for the statuses tproxy produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Error",
    }
}

/// A complete `Connection: close` response with a one-line text body.
pub fn error_response(status: u16, msg: &str) -> Vec<u8> {
    let body = format!("tproxy: {msg}\n");
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

/// Write an error response and flush.
pub async fn send_error(client: &mut ClientIo, status: u16, msg: &str) -> std::io::Result<()> {
    client.write_all(&error_response(status, msg)).await?;
    client.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_well_formed() {
        let r = String::from_utf8(error_response(502, "cannot connect to a:1: refused")).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body, "tproxy: cannot connect to a:1: refused\n");
    }
}
