//! One relay direction moved by monoio's rent API: read into a 256 KiB
//! buffer, write it all out, repeat. Works on both drivers for any stream;
//! used as `--passthrough copy` and as the benchmark baseline for splice.

use monoio::{
    io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf},
    net::TcpStream,
};

use super::{Direction, RelayError};

/// Userspace relay buffer per direction.
pub(super) const COPY_BUF_SIZE: usize = 256 * 1024;

/// Move bytes from `reader` to `writer` until EOF or an error.
/// Returns `Ok(())` at end of stream (the caller propagates the half-close).
pub(super) async fn pump(
    dir: &Direction<'_>,
    reader: &mut OwnedReadHalf<TcpStream>,
    writer: &mut OwnedWriteHalf<TcpStream>,
) -> Result<(), RelayError> {
    let mut buf = Vec::with_capacity(COPY_BUF_SIZE);
    loop {
        buf.clear();
        let (res, back) = reader.read(buf).await;
        buf = back;
        let n = res.map_err(|e| dir.read_error(e))?;
        if n == 0 {
            return Ok(());
        }
        let (res, back) = writer.write_all(buf).await;
        buf = back;
        let written = res.map_err(|e| dir.write_error(e))?;
        dir.count(written);
    }
}
