//! A TCP connection's bytes passed on without copying them through the process: `splice(2)`
//! from one socket into a pipe and from the pipe into the other socket, one pipe per direction.
//! Half-closes pass on as they come (EOF one way shuts down writing the other way); an error
//! either way ends both.

use std::io;
use std::os::fd::OwnedFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most bytes moved by one `splice` call (a default pipe holds 64 KiB).
const CHUNK: usize = 64 << 10;

/// A pipe for each direction of one connection.
pub(crate) struct Pipes {
    there: (OwnedFd, OwnedFd),
    back: (OwnedFd, OwnedFd),
}

impl Pipes {
    pub(crate) fn new() -> io::Result<Pipes> {
        Ok(Pipes {
            there: pipe()?,
            back: pipe()?,
        })
    }

    /// Pass bytes both ways between `a` and `b` until both directions ended.
    pub(crate) async fn both_ways(&self, a: &TcpStream, b: &TcpStream) -> io::Result<()> {
        tokio::try_join!(one_way(a, b, &self.there), one_way(b, a, &self.back))?;
        Ok(())
    }
}

/// A non-blocking pipe (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::PipeFlags;
    Ok(rustix::pipe::pipe_with(
        PipeFlags::CLOEXEC | PipeFlags::NONBLOCK,
    )?)
}

fn splice(
    from: &impl std::os::fd::AsFd,
    to: &impl std::os::fd::AsFd,
    len: usize,
) -> io::Result<usize> {
    use rustix::pipe::SpliceFlags;
    Ok(rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )?)
}

/// Move `from`'s bytes to `to` through `pipe` until `from` ends, then shut down writing to `to`.
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &(OwnedFd, OwnedFd)) -> io::Result<()> {
    let (pipe_out, pipe_in) = pipe;
    let (mut held, mut eof) = (0usize, false);
    loop {
        let mut moved = false;
        if !eof && held < CHUNK {
            match from.try_io(Interest::READABLE, || splice(from, pipe_in, CHUNK - held)) {
                Ok(0) => eof = true,
                Ok(n) => (held, moved) = (held + n, true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if held > 0 {
            match to.try_io(Interest::WRITABLE, || splice(pipe_out, to, held)) {
                Ok(n) => (held, moved) = (held - n, moved || n > 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if eof && held == 0 {
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(());
        }
        if moved {
            continue;
        }
        // Nothing moved: wait until what could move can.
        match (!eof && held < CHUNK, held > 0) {
            (true, true) => {
                tokio::select! {
                    r = from.readable() => r?,
                    r = to.writable() => r?,
                }
            }
            (true, false) => from.readable().await?,
            _ => to.writable().await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// 32 MiB one way and an answer the other way pass intact, and a half-close passes on.
    #[tokio::test]
    async fn bytes_pass_both_ways_intact_and_a_half_close_passes_on() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        // The server: reads everything, then answers its length and a checksum, then closes.
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.expect("read");
            let sum: u64 = all.iter().map(|b| u64::from(*b)).sum();
            s.write_all(format!("{} {sum}", all.len()).as_bytes())
                .await
                .expect("answer");
        });
        let pl = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let paddr = pl.local_addr().expect("addr");
        let proxy = tokio::spawn(async move {
            let (c, _) = pl.accept().await.expect("accept");
            let u = TcpStream::connect(addr).await.expect("upstream");
            Pipes::new()
                .expect("pipes")
                .both_ways(&c, &u)
                .await
                .expect("pass");
        });
        let mut c = TcpStream::connect(paddr).await.expect("connect");
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let sum: u64 = data.iter().map(|b| u64::from(*b)).sum();
        c.write_all(&data).await.expect("send");
        c.shutdown().await.expect("half-close");
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.expect("answer");
        assert_eq!(answer, format!("{} {sum}", data.len()));
        server.await.expect("server");
        proxy.await.expect("proxy");
    }
}
