//! One exec session on an upgraded websocket: runs `runc exec`, copies the
//! process's output to channels 1 and 2, channel 0 to its input, and ends
//! with the exit status on channel 3 and a websocket close. When the client
//! goes away first the process is killed, so nothing keeps running unseen.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use super::tty::{self, Pty};
use super::ExecOptions;
use crate::runtime::runc::Runc;

/// Channel numbers of the protocol.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: "the peer closed the channel in the next byte".
const CLOSE: u8 = 255;
/// How long a terminal session waits for the client's first size.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(2);

/// A private directory for the process.json and pid file of one session.
struct SessionDir(PathBuf);

impl SessionDir {
    fn create() -> std::io::Result<SessionDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("skiff-exec-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(SessionDir(dir))
    }

    /// Kills the exec'd process (runc wrote its host PID) if it still runs.
    fn kill_process(&self) {
        let pid = std::fs::read_to_string(self.0.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for SessionDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Status sent on channel 3 when the command has finished.
pub fn exit_status(command: &[String], status: Result<ExitStatus, String>) -> Value {
    match status {
        Ok(s) if s.success() => json!({"metadata": {}, "status": "Success"}),
        Ok(s) => {
            let code = s.code().unwrap_or(137);
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Err(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500,
        }),
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// Copies `r` to `channel` until it ends.
async fn pump(mut r: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    // A pty master reports EIO once the process side is closed: that is the end.
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send(frame(channel, &buf[..n])).await.is_err() {
            break;
        }
    }
}

/// Writes what arrives on channel 0 to the process until the client closes it.
async fn feed(mut w: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
}

/// Why the copy loop stopped.
enum End {
    /// All output was sent: report the exit status.
    Finished,
    /// The client closed the connection or it broke.
    ClientGone,
}

/// Runs the session to its end.
pub async fn run<S>(ws: WebSocketStream<S>, runc: &Runc, id: &str, opts: ExecOptions, v5: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, incoming) = ws.split();
    let mut incoming = incoming.map(|m| m.map(as_binary));
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(64);
    let mut stdin_tx = opts.stdin.then_some(in_tx);
    let mut size = None;
    if opts.tty {
        // Clients send their terminal's size first; start with it.
        let first = tokio::time::timeout(FIRST_SIZE_WAIT, async {
            loop {
                match incoming.next().await {
                    Some(Ok(Message::Binary(data))) => match data.first() {
                        Some(&RESIZE) => return Ok(parse_size(&data[1..])),
                        Some(&STDIN) => {
                            if let Some(tx) = &stdin_tx {
                                let _ = tx.try_send(data.slice(1..));
                            }
                        }
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(()),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        match first {
            Ok(Ok(s)) => size = s,
            Ok(Err(())) => return,
            Err(_) => {}
        }
    }
    let started = start(runc, id, &opts, size, out_tx, in_rx).await;
    let (mut child, dir, master) = match started {
        Ok(s) => s,
        Err(message) => {
            let status = exit_status(&opts.command, Err(message));
            let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
            let _ = sink.send(close_message()).await;
            return;
        }
    };
    let end = loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        break End::ClientGone;
                    }
                }
                None => break End::Finished,
            },
            msg = incoming.next() => match msg {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(&STDIN) => {
                        if let Some(tx) = &stdin_tx {
                            let _ = tx.send(data.slice(1..)).await;
                        }
                    }
                    Some(&RESIZE) => resize(master.as_ref(), child.id(), &data[1..]),
                    Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => stdin_tx = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientGone,
                Some(Ok(_)) => {}
            },
        }
    };
    drop(stdin_tx);
    match end {
        End::ClientGone => {
            dir.kill_process();
            let _ = child.kill().await;
        }
        End::Finished => {
            let status = child.wait().await.map_err(|e| e.to_string());
            let status = exit_status(&opts.command, status);
            let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
            let _ = sink.send(close_message()).await;
            // Give the client a moment to answer the close so it sees a clean end.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(m)) = incoming.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// Text frames carry the same channel bytes (the Python client sends its
/// input as text).
fn as_binary(m: Message) -> Message {
    match m {
        Message::Text(t) => Message::Binary(Bytes::copy_from_slice(t.as_bytes())),
        other => other,
    }
}

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// `{"Width":…,"Height":…}` of a resize message.
fn parse_size(data: &[u8]) -> Option<(u16, u16)> {
    let size = serde_json::from_slice::<Value>(data).ok()?;
    let dim = |k: &str| size[k].as_u64().and_then(|v| u16::try_from(v).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// Applies a resize message to the terminal and tells runc (`pid`).
fn resize(master: Option<&OwnedFd>, runc_pid: Option<u32>, data: &[u8]) {
    let Some(master) = master else { return };
    if let Some((w, h)) = parse_size(data) {
        if let Err(e) = tty::set_size(master, w, h) {
            tracing::debug!("resizing exec terminal: {e}");
            return;
        }
        if let Some(pid) = runc_pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGWINCH,
            );
        }
    }
}

type Started = (tokio::process::Child, SessionDir, Option<OwnedFd>);

/// Starts `runc exec` and the copying tasks.
async fn start(
    runc: &Runc,
    id: &str,
    opts: &ExecOptions,
    size: Option<(u16, u16)>,
    out: mpsc::Sender<Message>,
    input: mpsc::Receiver<Bytes>,
) -> Result<Started, String> {
    let dir = SessionDir::create().map_err(|e| format!("preparing the exec: {e}"))?;
    let process = runc
        .exec_process(id, &opts.command, opts.tty, size)
        .await
        .map_err(|e| e.to_string())?;
    let process_file = dir.0.join("process.json");
    std::fs::write(&process_file, process.to_string())
        .map_err(|e| format!("preparing the exec: {e}"))?;
    let mut cmd = runc.exec_command(id, &process_file, &dir.0.join("pid"));
    if !opts.tty {
        let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(piped(opts.stdin))
            .stdout(piped(opts.stdout))
            .stderr(piped(opts.stderr));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("running runc exec: {e}; is runc installed?"))?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump(stdout, STDOUT, out.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump(stderr, STDERR, out));
        }
        if let Some(stdin) = child.stdin.take() {
            tokio::spawn(feed(stdin, input));
        }
        return Ok((child, dir, None));
    }
    let term = |e: std::io::Error| format!("allocating a terminal for the exec: {e}");
    let pty = Pty::open().map_err(term)?;
    // runc copies this terminal's size inward when it starts.
    if let Some((w, h)) = size {
        tty::set_size(&pty.master, w, h).map_err(term)?;
    }
    // runc's own errors (e.g. executable not found) land on the terminal too.
    cmd.stdin(pty.stdio().map_err(term)?)
        .stdout(pty.stdio().map_err(term)?)
        .stderr(pty.stdio().map_err(term)?);
    let child = cmd
        .spawn()
        .map_err(|e| format!("running runc exec: {e}; is runc installed?"))?;
    let master = pty.into_master();
    let reader = master.try_clone().map_err(term)?;
    tokio::spawn(pump(
        tokio::fs::File::from_std(std::fs::File::from(reader)),
        STDOUT,
        out,
    ));
    if opts.stdin {
        let writer = master.try_clone().map_err(term)?;
        tokio::spawn(feed(
            tokio::fs::File::from_std(std::fs::File::from(writer)),
            input,
        ));
    }
    Ok((child, dir, Some(master)))
}
