//! A pollable readiness flag: an eventfd that is readable exactly while its
//! owner says something is waiting (level-triggered, like a socket with
//! unread bytes).
//!
//! The owner keeps the "is it raised" bit next to its queue, under the same
//! lock, and calls [`Signal::set`] after every change: the eventfd is
//! written when the queue becomes non-empty and read back to zero when it
//! becomes empty, so `poll(2)` on it reports `POLLIN` while, and only while,
//! something is queued. No system call when nothing changes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The eventfd and the bit mirroring its state.
#[derive(Debug)]
pub(crate) struct Signal {
    fd: OwnedFd,
    raised: bool,
}

impl Signal {
    /// A lowered signal (non-blocking, close-on-exec eventfd).
    pub(crate) fn new() -> io::Result<Signal> {
        // SAFETY: eventfd(2) with constant flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Signal {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            raised: false,
        })
    }

    /// The descriptor to poll for reading.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Make the descriptor readable (`on`) or not.
    pub(crate) fn set(&mut self, on: bool) {
        if on == self.raised {
            return;
        }
        self.raised = on;
        if on {
            let one = 1u64.to_ne_bytes();
            // SAFETY: write(2) of 8 bytes from a live buffer to our eventfd. It
            // cannot fail short of a counter overflow, impossible here since
            // the counter only ever holds 0 or 1.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        } else {
            let mut buf = [0u8; 8];
            // SAFETY: read(2) of 8 bytes into a live buffer from our eventfd:
            // resets the counter to 0 (EAGAIN if it already was).
            unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn readable_exactly_while_raised() {
        let mut s = Signal::new().unwrap();
        assert!(!readable(s.raw_fd()));
        s.set(true);
        s.set(true);
        assert!(readable(s.raw_fd()));
        assert!(readable(s.raw_fd()), "level-triggered: still readable");
        s.set(false);
        assert!(!readable(s.raw_fd()));
        s.set(false);
        s.set(true);
        assert!(readable(s.raw_fd()));
    }
}
