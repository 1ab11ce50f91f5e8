//! Zero-copy object bodies. A large object file is mapped into memory and served as a
//! [`Bytes`] over that mapping; the connection ([`Conn`]) sends such bytes with sendfile(2),
//! from the page cache straight to the socket as nginx does, instead of copying them through
//! user space first.
//!
//! hyper hands its connection the body's own slices (its vectored write strategy, which
//! [`Conn`] asks for). [`Conn`] looks each slice's address up among the live mappings and,
//! for a mapped slice, sends the same byte range of the mapped file. The mapping is both the
//! key and the fallback: anything not sent with sendfile (another OS, a TLS layer) is written
//! from the mapping, which holds the same bytes.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The live mappings, by start address: their length and the file they map.
#[derive(Default)]
pub struct Mappings(RwLock<BTreeMap<usize, (usize, i32)>>);

/// One mapped file; unregisters itself before it is unmapped and its file closed.
struct Mapping {
    map: memmap2::Mmap,
    // Held open for sendfile; closed after `map` is unregistered (fields drop after `drop`).
    _file: File,
    registry: Arc<Mappings>,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.registry.0.write().unwrap_or_else(|p| p.into_inner()).remove(&(self.map.as_ptr() as usize));
    }
}

impl Mappings {
    /// `file`'s bytes, mapped, as one `Bytes` that a [`Conn`] sends with sendfile.
    pub fn map(self: &Arc<Self>, file: File) -> io::Result<Bytes> {
        if file.metadata()?.len() == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: object files are written once under their hash (by rename) and never
        // changed or truncated by pd. Over plain HTTP on Linux nothing in pd reads this
        // mapping: `Conn` sends its ranges from the file with sendfile, which reports a file
        // that another process shortened as an error instead of faulting. A TLS connection
        // reads it to encrypt it, as it would read any other `Bytes`.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(map.as_ptr() as usize, (map.len(), fd));
        Ok(Bytes::from_owner(Mapping { map, _file: file, registry: self.clone() }))
    }

    /// The file and offset that `slice` maps, if it lies wholly within one live mapping.
    fn find(&self, slice: &[u8]) -> Option<(i32, u64)> {
        if slice.is_empty() {
            return None;
        }
        let at = slice.as_ptr() as usize;
        let maps = self.0.read().unwrap_or_else(|p| p.into_inner());
        let (&start, &(len, fd)) = maps.range(..=at).next_back()?;
        (at + slice.len() <= start + len).then_some((fd, (at - start) as u64))
    }

    /// How many mappings are live (for tests).
    pub fn live(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A server connection that sends mapped slices with sendfile and everything else with
/// `writev`.
pub struct Conn {
    tcp: TcpStream,
    mappings: Arc<Mappings>,
}

impl Conn {
    /// Serves `tcp`, sending slices of `mappings` with sendfile.
    pub fn new(tcp: TcpStream, mappings: Arc<Mappings>) -> Conn {
        Conn { tcp, mappings }
    }

    /// The socket, for a layer (TLS) that does its own writing.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    /// Sends `len` bytes of file `fd` from `offset`, once the socket is writable.
    #[cfg(target_os = "linux")]
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        fd: i32,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let socket = std::os::fd::AsRawFd::as_raw_fd(&self.tcp);
        let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: `socket` is this connection's; `fd` is held open by the mapping that the
        // slice being written borrows from; `off` is a valid pointer.
        let sent = ready!(self.poll_io(cx, || match unsafe { libc::sendfile(socket, fd, &mut off, len) } {
            n if n < 0 => Err(io::Error::last_os_error()),
            n => Ok(n as usize),
        }))?;
        if sent == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "an object file is shorter than when it was mapped",
            )));
        }
        Poll::Ready(Ok(sent))
    }

    /// Writes the plain slices before a mapped one with `MSG_MORE`, so the response head
    /// waits for the file bytes after it and both leave in full segments (what nginx's
    /// `tcp_nopush` does with two `TCP_CORK` calls; without it, 1 MiB answers ran at half
    /// nginx's rate). The sendfile that follows pushes them.
    #[cfg(target_os = "linux")]
    fn poll_write_head(&self, cx: &mut Context<'_>, head: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let socket = socket2::SockRef::from(&self.tcp);
        self.poll_io(cx, || socket.send_vectored_with_flags(head, libc::MSG_MORE | libc::MSG_NOSIGNAL))
    }

    /// Runs the non-blocking write `io` once the socket is writable, until it does not
    /// report `WouldBlock`.
    #[cfg(target_os = "linux")]
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        mut io: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_io(tokio::io::Interest::WRITABLE, &mut io) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// The slices before the first mapped one go out with `writev` (with `MSG_MORE`, if a
    /// mapped one follows); a mapped slice at the front goes out with sendfile. Either way a prefix, as
    /// `poll_write_vectored` may.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let plain = if cfg!(target_os = "linux") {
            bufs.iter().position(|b| this.mappings.find(b).is_some()).unwrap_or(bufs.len())
        } else {
            bufs.len()
        };
        #[cfg(target_os = "linux")]
        if plain < bufs.len() {
            // Empty slices before the mapped one count as sent: the count stays a prefix.
            if bufs[..plain].iter().all(|b| b.is_empty()) {
                if let Some((fd, offset)) = this.mappings.find(&bufs[plain]) {
                    return this.poll_send_file(cx, fd, offset, bufs[plain].len());
                }
            }
            return this.poll_write_head(cx, &bufs[..plain]);
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Headers from memory, then a slice of a mapped file: the peer reads exactly those
    /// bytes, in order; the mapping is unregistered once its last `Bytes` is gone.
    #[tokio::test]
    async fn a_mapped_slice_arrives_as_the_files_bytes_after_plain_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("object");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let mappings = Arc::new(Mappings::default());
        let bytes = mappings.map(File::open(&path).expect("open")).expect("map");
        assert_eq!(mappings.live(), 1);
        let body = bytes.slice(1000..250_000);
        drop(bytes);
        assert_eq!(mappings.find(&body).map(|(_, offset)| offset), Some(1000));
        assert_eq!(mappings.find(b"not mapped"), None);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let mut peer = TcpStream::connect(addr).await.expect("connect");
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.expect("read");
            got
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut conn = Conn::new(tcp, mappings.clone());
        let none: [IoSlice; 0] = [];
        let wrote = std::future::poll_fn(|cx| Pin::new(&mut conn).poll_write_vectored(cx, &none)).await;
        assert_eq!(wrote.expect("nothing"), 0);
        // Empty slices before a mapped one: the mapped bytes go out, counted as a prefix.
        let first = [IoSlice::new(&[]), IoSlice::new(&body[..10])];
        let wrote = std::future::poll_fn(|cx| Pin::new(&mut conn).poll_write_vectored(cx, &first)).await;
        assert_eq!(wrote.expect("write"), 10);
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut bufs = [IoSlice::new(head), IoSlice::new(&body)];
        let mut slices: &mut [IoSlice] = &mut bufs;
        while !slices.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut conn).poll_write_vectored(cx, slices))
                .await
                .expect("write");
            IoSlice::advance_slices(&mut slices, n);
        }
        conn.shutdown().await.expect("shutdown");
        drop(conn);
        let got = reader.await.expect("reader");
        assert_eq!(&got[..10], &content[1000..1010]);
        let got = &got[10..];
        assert_eq!(&got[..head.len()], head);
        assert!(got[head.len()..] == content[1000..250_000], "the body is the file's range");
        drop(body);
        assert_eq!(mappings.live(), 0, "the mapping went with its last Bytes");
    }

    #[test]
    fn an_empty_file_maps_to_empty_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").expect("write");
        let mappings = Arc::new(Mappings::default());
        assert!(mappings.map(File::open(&path).expect("open")).expect("map").is_empty());
        assert_eq!(mappings.live(), 0);
    }
}
