//! The terminal of a `tty` exec. runc only hands a terminal's master end to
//! a console socket when it detaches, and then the exit code is lost; so
//! `runc exec --tty` stays attached and copies between the terminal it
//! allocates in the container and its own stdio, which is the slave end of
//! a pseudo-terminal the agent opens here. A resize sets this terminal's
//! size and signals runc (SIGWINCH), which copies the size inward.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Stdio;

use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// Both ends of a pseudo-terminal.
pub struct Pty {
    /// The agent's end: what the client types goes in, output comes out.
    pub master: OwnedFd,
    /// runc's stdio.
    slave: File,
}

impl Pty {
    /// Opens a new pseudo-terminal.
    pub fn open() -> std::io::Result<Pty> {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let path = PathBuf::from(OsString::from_vec(name.into_bytes()));
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Pty { master, slave })
    }

    /// A handle on the slave end for one of runc's stdio streams.
    pub fn stdio(&self) -> std::io::Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone()?))
    }

    /// Closes the agent's slave handle (once runc holds its own) and keeps
    /// the master: the slave's last close is how the output ends.
    pub fn into_master(self) -> OwnedFd {
        self.master
    }
}

/// Sets the terminal's window size (a resize message on channel 4).
pub fn set_size(master: &impl AsFd, width: u16, height: u16) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(Into::into)
}
