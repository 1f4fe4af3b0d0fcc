//! Per-thread pool of kernel pipes used as splice(2) buffers.
//!
//! A relay direction borrows one pipe for its lifetime. Pipes are created
//! `O_CLOEXEC | O_NONBLOCK` and enlarged to [`PIPE_SIZE`] when the kernel
//! allows it (`/proc/sys/fs/pipe-max-size`, `fs.pipe-user-pages-soft`); when it
//! does not, the pipe keeps whatever size it got and still works, just with
//! more syscalls per MiB. A pipe goes back to the pool only when it is
//! provably empty; otherwise it is closed, so stale bytes can never leak into
//! another connection. The pool is bounded by [`PIPE_POOL_MAX`] and lives in a
//! thread-local (monoio is thread-per-core: no locking, no sharing).

use std::{
    cell::RefCell,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Target pipe capacity: 1 MiB (measured fastest on this stack).
pub const PIPE_SIZE: usize = 1 << 20;

/// Most idle pipes kept per thread (each pipe holds two fds).
pub const PIPE_POOL_MAX: usize = 64;

/// splice flags used for every call: never block on the pipe, move pages.
const SPLICE_FLAGS: libc::c_uint = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;

/// The two ends of one pipe and the capacity the kernel granted.
struct PipeFds {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

thread_local! {
    static POOL: RefCell<Vec<PipeFds>> = const { RefCell::new(Vec::new()) };
}

impl PipeFds {
    fn create() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let capacity = enlarge(write.as_raw_fd());
        Ok(Self {
            read,
            write,
            capacity,
        })
    }

    /// Bytes sitting in the pipe according to the kernel (FIONREAD).
    fn queued(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &raw mut n) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Try [`PIPE_SIZE`], then smaller sizes; return the capacity actually in force.
fn enlarge(fd: RawFd) -> usize {
    for size in [PIPE_SIZE, PIPE_SIZE / 4, PIPE_SIZE / 16] {
        let Ok(arg) = libc::c_int::try_from(size) else {
            continue;
        };
        // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, arg) };
        if rc > 0 {
            return usize::try_from(rc).unwrap_or(size);
        }
    }
    // SAFETY: F_GETPIPE_SZ takes no argument and touches no memory.
    let rc = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    tracing::debug!(
        capacity = rc,
        wanted = PIPE_SIZE,
        "pipe could not be enlarged; check fs.pipe-max-size and fs.pipe-user-pages-soft"
    );
    // The Linux default (16 pages) when even F_GETPIPE_SZ fails.
    usize::try_from(rc)
        .ok()
        .filter(|c| *c > 0)
        .unwrap_or(64 * 1024)
}

/// A pipe borrowed from this thread's pool. Returns itself on drop when empty.
pub(super) struct Pipe {
    fds: Option<PipeFds>,
    /// Bytes spliced in and not yet spliced out.
    pending: usize,
}

impl Pipe {
    /// Take a pooled pipe or create a new one.
    pub(super) fn take() -> io::Result<Self> {
        let pooled = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        let fds = match pooled {
            Some(fds) => fds,
            None => PipeFds::create()?,
        };
        Ok(Self {
            fds: Some(fds),
            pending: 0,
        })
    }

    /// Bytes waiting in the pipe to be written out.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// splice(2) up to the pipe's capacity from socket `from` into the pipe.
    /// `Ok(0)` is end of stream. Only call when the pipe is empty.
    pub(super) fn fill_from(&mut self, from: RawFd) -> io::Result<usize> {
        let Some(fds) = &self.fds else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        let room = fds.capacity.saturating_sub(self.pending).max(1);
        let n = splice(from, fds.write.as_raw_fd(), room)?;
        self.pending += n;
        Ok(n)
    }

    /// splice(2) as much of the pending bytes as the socket `to` takes.
    pub(super) fn drain_into(&mut self, to: RawFd) -> io::Result<usize> {
        let Some(fds) = &self.fds else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        let n = splice(fds.read.as_raw_fd(), to, self.pending)?;
        self.pending = self.pending.saturating_sub(n);
        Ok(n)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let Some(fds) = self.fds.take() else {
            return;
        };
        // Pool only a pipe that both our count and the kernel say is empty;
        // anything else is closed here by dropping its fds.
        if self.pending != 0 || !matches!(fds.queued(), Ok(0)) {
            return;
        }
        let _ = POOL.try_with(move |pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < PIPE_POOL_MAX {
                pool.push(fds);
            }
        });
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call (owned by the
    // caller's stream or pipe); null offsets are required for pipes/sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            SPLICE_FLAGS,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Idle pipes pooled on the calling thread.
pub fn pooled_pipes() -> usize {
    POOL.try_with(|pool| pool.borrow().len()).unwrap_or(0)
}

/// Close every idle pipe pooled on the calling thread (worker shutdown, tests).
pub fn drain_pipe_pool() {
    let _ = POOL.try_with(|pool| pool.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    fn write_into(pipe: &Pipe, bytes: &[u8]) {
        let fd = pipe.fds.as_ref().unwrap().write.as_raw_fd();
        // SAFETY: test-only write of a valid buffer into an open pipe.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    #[test]
    fn pipe_is_enlarged_nonblocking_and_cloexec() {
        let pipe = Pipe::take().unwrap();
        let fds = pipe.fds.as_ref().unwrap();
        assert!(fds.capacity >= 64 * 1024, "capacity {}", fds.capacity);
        for fd in [fds.read.as_raw_fd(), fds.write.as_raw_fd()] {
            // SAFETY: F_GETFL/F_GETFD on an open fd.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            // SAFETY: as above.
            let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_ne!(fl & libc::O_NONBLOCK, 0);
            assert_ne!(fdfl & libc::FD_CLOEXEC, 0);
        }
        drop(pipe);
        drain_pipe_pool();
    }

    #[test]
    fn empty_pipe_is_pooled_and_reused_dirty_pipe_is_closed() {
        // Runs on its own test thread, so the thread-local pool starts empty.
        drain_pipe_pool();
        let pipe = Pipe::take().unwrap();
        drop(pipe);
        assert_eq!(pooled_pipes(), 1);
        let again = Pipe::take().unwrap();
        assert_eq!(pooled_pipes(), 0);

        // Bytes the bookkeeping does not know about: the kernel check catches them.
        write_into(&again, b"stale");
        drop(again);
        assert_eq!(pooled_pipes(), 0);

        // Pending bytes by our own count: closed, not pooled.
        let mut counted = Pipe::take().unwrap();
        write_into(&counted, b"xyz");
        counted.pending = 3;
        drop(counted);
        assert_eq!(pooled_pipes(), 0);
    }

    #[test]
    fn pool_is_bounded_and_drain_closes_everything() {
        drain_pipe_pool();
        let before = open_fds();
        let pipes: Vec<Pipe> = (0..PIPE_POOL_MAX + 5)
            .map(|_| Pipe::take().unwrap())
            .collect();
        drop(pipes);
        assert_eq!(pooled_pipes(), PIPE_POOL_MAX);
        drain_pipe_pool();
        assert_eq!(pooled_pipes(), 0);
        // Other unit tests in this process open fds concurrently; only the
        // pool's own 2*MAX fds are large enough to be unambiguous.
        assert!(open_fds() < before + PIPE_POOL_MAX);
    }
}
